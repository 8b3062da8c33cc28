"""The contenders of `netlab bench`: kernel DNAT (with and without RPS), the per-datagram reference and the
forwarder in both receive modes, each a context manager that sets itself up on the host and tears down."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from netlab.bench.lab import (
    BACKEND_ADDRESS,
    HOST_ADDRESS,
    HOST_DNAT,
    PORT,
    SENDER_ADDRESS,
    BenchLab,
    Case,
    Contender,
)
from netlab.lab.nft import delete_table
from netlab.service.activation import ForwarderUnderTest, start_forwarder


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


def per_datagram_reference(bench: BenchLab, case: Case) -> Any:
    return socket_activated(bench, [sys.executable, "-m", "netlab.programs.per_datagram"], [])


FORWARDER_ARGS = ["--log-level", "warning", "--receive-buffer", str(4 << 20), "--max-flows", "4096"]


def forwarder(bench: BenchLab, case: Case) -> Any:
    return socket_activated(bench, None, FORWARDER_ARGS)


def forwarder_single(bench: BenchLab, case: Case) -> Any:
    return socket_activated(bench, None, [*FORWARDER_ARGS, "--receive", "single"])


CONTENDERS = {
    "kernel-dnat+rps": Contender("kernel-dnat+rps", kernel_dnat, rps=True),
    "kernel-dnat": Contender("kernel-dnat", kernel_dnat, rps=False),
    # Userspace contenders run without RPS: the host's receive work then stays on the sender's core and
    # leaves the other core to the forwarding process (RPS would put both on CPU 1).
    "per-datagram": Contender("per-datagram", per_datagram_reference, rps=False),
    "forwarder": Contender("forwarder", forwarder, rps=False),
    "forwarder-single": Contender("forwarder-single", forwarder_single, rps=False),
}
BASELINE = "kernel-dnat+rps"
REFERENCE = "per-datagram"
