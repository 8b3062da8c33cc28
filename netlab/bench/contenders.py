"""The contenders of `netlab bench`: kernel DNAT (with and without RPS), the per-datagram reference, the
forwarder in its default configuration (the raw send path) and its other modes (per-client sockets, GSO,
relay with flow sockets or one tproxy reply socket, single receive, PROXY v2 in), and the peers from
Debian's archive, nginx (stream module, transparent `proxy_bind`) and go-mmproxy (PROXY v2 in, transparent
out). Each is a context manager that starts it on the host and tears it down; every userspace contender is
pinned to the same core (CONTENDER_CPU).

Adding a contender is one entry in CONTENDERS. The forwarder's reply relay and PROXY v2 modes, once the
forwarder has them, are `forwarder_with("--reply", "relay")` with `relays_replies=True`, and
`forwarder_with(<its PROXY v2 option>)` with `proxy_v2=True` (the sender then prefixes the header).
"""

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from netlab.bench.lab import (
    BACKEND_ADDRESS,
    CONTENDER_CPU,
    HOST_ADDRESS,
    HOST_DNAT,
    PORT,
    REPLY_SOCKET_PORT,
    SENDER_ADDRESS,
    BenchLab,
    Case,
    Contender,
)
from netlab.errors import UsageError
from netlab.lab.nft import delete_table
from netlab.lab.process import Process
from netlab.service.activation import ForwarderUnderTest, start_forwarder

PINNED = ["taskset", "--cpu-list", str(CONTENDER_CPU)]  # execs, so pids (LISTEN_PID) stay the same
NGINX = "/usr/sbin/nginx"
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
GO_MMPROXY = "go-mmproxy"
Setup = Callable[[BenchLab, Case], AbstractContextManager[Any]]


@contextmanager
def kernel_dnat(bench: BenchLab, case: Case) -> Iterator[None]:
    bench.nft(bench.host, HOST_DNAT)
    try:
        yield
    finally:
        delete_table(bench.host, "ip", "netlab_dnat")


@contextmanager
def socket_activated(
    bench: BenchLab, program: list[str] | None, args: list[str], command_prefix: list[str] | None = None
) -> Iterator[ForwarderUnderTest]:
    process = start_forwarder(
        bench.host,
        [f"{HOST_ADDRESS}:{PORT}"],
        [f"{BACKEND_ADDRESS}:{PORT}"],
        args=args,
        program=program,
        command_prefix=command_prefix or (),
    )
    try:
        bench.sender.send_udp(src=SENDER_ADDRESS, dst=HOST_ADDRESS, sport=9999, dport=PORT, payload=b"wake")
        process.wait_ready()
        yield process
    finally:
        process.stop()


@contextmanager
def per_datagram_reference(bench: BenchLab, case: Case) -> Iterator[Process]:
    program = [sys.executable, "-m", "netlab.programs.per_datagram"]
    with socket_activated(bench, program, [], command_prefix=PINNED) as started:
        yield started.process


FORWARDER_ARGS = ["--log-level", "warning", "--receive-buffer", str(4 << 20), "--max-flows", "4096"]
# The per-client sockets path, raced (and its memory measured) beside the default raw send path.
SOCKETS_PATH = ("--send-path", "sockets")


def checkout_program(checkout: Path) -> list[str]:
    """The command that runs `checkout`'s forwarder whatever the working directory: `-P` keeps Python from
    putting the directory it was started in (a checkout with its own `forwarder/`) ahead of PYTHONPATH, which
    would race this checkout against itself. `env` execs, so the forwarder keeps the pid LISTEN_PID names."""
    return ["env", f"PYTHONPATH={checkout}", sys.executable, "-P", "-m", "forwarder"]


def forwarder_with(*extra: str, checkout: Path | None = None) -> Setup:
    """The forwarder, socket-activated and pinned, with `extra` arguments after the benchmark's own; the one
    of another `checkout` (its `forwarder/` package) when given, to race two versions in one run."""
    program = None if checkout is None else checkout_program(checkout)

    @contextmanager
    def setup(bench: BenchLab, case: Case) -> Iterator[Process]:
        # Echo cases too run the default checksum (0): the backend's echo sets it back to 0 after its port
        # rewrite (see BACKEND_ECHO).
        with socket_activated(bench, program, [*FORWARDER_ARGS, *extra], command_prefix=PINNED) as started:
            yield started.process

    return setup


def nginx_config(run_dir: str) -> str:
    """nginx's stream proxy as a transparent UDP forwarder: one worker, root (IP_TRANSPARENT), sessions kept
    for the whole run (proxy_responses unset: any number of replies; proxy_timeout longer than a run)."""
    return f"""load_module {NGINX_STREAM_MODULE};
user root;
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {run_dir}/nginx.pid;
error_log {run_dir}/error.log warn;
events {{
    worker_connections 16384;
}}
stream {{
    server {{
        listen {HOST_ADDRESS}:{PORT} udp;
        proxy_pass {BACKEND_ADDRESS}:{PORT};
        proxy_bind $remote_addr:$remote_port transparent;
        proxy_timeout 10m;
    }}
}}
"""


@contextmanager
def nginx(bench: BenchLab, case: Case) -> Iterator[Process]:
    run_dir = bench.lab.workdir / f"nginx-{bench.lab.next_serial()}"
    run_dir.mkdir()
    config = run_dir / "nginx.conf"
    config.write_text(nginx_config(str(run_dir)))
    argv = [*PINNED, NGINX, "-p", str(run_dir), "-e", str(run_dir / "error.log"), "-c", str(config)]
    process = bench.host.run(argv, label="nginx")
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def go_mmproxy(bench: BenchLab, case: Case) -> Iterator[Process]:
    argv = [
        *PINNED,
        GO_MMPROXY,
        "-p",
        "udp",
        "-l",
        f"{HOST_ADDRESS}:{PORT}",
        "-4",
        f"{BACKEND_ADDRESS}:{PORT}",
    ]
    process = bench.host.run([*argv, "-close-after", "600"], label="go-mmproxy")
    try:
        yield process
    finally:
        process.stop()


CONTENDERS = {
    contender.name: contender
    for contender in [
        Contender("kernel-dnat+rps", kernel_dnat, rps=True, userspace=False, relays_replies=True),
        # Userspace contenders run without RPS: the host's receive work then stays on the sender's core and
        # leaves the other core to the forwarding process (RPS would put both on CPU 1).
        Contender("kernel-dnat", kernel_dnat, userspace=False, relays_replies=True),
        Contender("per-datagram", per_datagram_reference),
        Contender("forwarder", forwarder_with()),
        Contender("forwarder-gso", forwarder_with("--gso")),
        Contender("forwarder-sockets", forwarder_with(*SOCKETS_PATH)),
        Contender("forwarder-checksum", forwarder_with("--udp-checksum", "compute")),
        # Relay mode: connected flow sockets; in echo cases it carries the replies back itself.
        Contender("forwarder-relay", forwarder_with("--reply", "relay"), relays_replies=True),
        # Relay mode with one reply socket: the host steers the replies there (nftables tproxy).
        Contender(
            "forwarder-tproxy",
            forwarder_with("--reply", "relay", "--reply-tproxy", str(REPLY_SOCKET_PORT)),
            relays_replies=True,
            tproxy_replies=True,
        ),
        Contender("forwarder-single", forwarder_with("--receive", "single")),
        # PROXY v2 in, as go-mmproxy: the sender prefixes every datagram with a header naming its source.
        Contender(
            "forwarder-proxy-v2",
            forwarder_with("--proxy-protocol-from", f"{SENDER_ADDRESS}/32"),
            proxy_v2=True,
        ),
        Contender(
            "nginx",
            nginx,
            relays_replies=True,
            requires=(NGINX, NGINX_STREAM_MODULE),
            package="nginx-light and libnginx-mod-stream",
        ),
        Contender(
            "go-mmproxy",
            go_mmproxy,
            relays_replies=True,
            proxy_v2=True,
            requires=(GO_MMPROXY,),
            package="go-mmproxy",
        ),
    ]
}
BASELINE = "kernel-dnat+rps"
REFERENCE = "per-datagram"
PEERS = ("nginx", "go-mmproxy")  # the ratios every contender gets besides BASELINE and REFERENCE


def add_checkout(checkout: Path, label: str) -> list[str]:
    """Race the forwarder of another checkout (e.g. an older commit, `git worktree add DIR REV`) beside this
    one: as `forwarder@LABEL` in its default configuration and `forwarder-relay@LABEL` with --reply relay
    (echo cases). Returns the new contenders' names; UsageError when `checkout` holds no forwarder."""
    if not (checkout / "forwarder" / "__main__.py").is_file():
        raise UsageError(f"--compare-with {str(checkout)!r}: expected a checkout with forwarder/__main__.py")
    added = [
        Contender(f"forwarder@{label}", forwarder_with(checkout=checkout)),
        Contender(
            f"forwarder-relay@{label}",
            forwarder_with("--reply", "relay", checkout=checkout),
            relays_replies=True,
        ),
    ]
    for contender in added:
        CONTENDERS[contender.name] = contender
    return [contender.name for contender in added]
