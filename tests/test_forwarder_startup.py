"""Start-up checks with real file descriptors: sockets (UDP, TCP, AF_UNIX), pipes and files are placed at
fd 3.. of a child process, as systemd does, and the forwarder must refuse each bad input with a one-line
error naming the value and its documented sysexits code. No privileges needed, except where a test drops
CAP_NET_ADMIN with setpriv (that one needs root to drop a capability it has).
"""

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from forwarder.service.options import build_parser
from netlab.lab.process import python_env

LAUNCH = r"""
import fcntl, json, os, sys
fds = json.loads(sys.argv[1])
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for index, fd in enumerate(moved):
    os.dup2(fd, 3 + index)
    os.close(fd)
err = os.fstat(2)
for key, value in json.loads(sys.argv[2]).items():
    value = value.replace("{pid}", str(os.getpid()))
    os.environ[key] = value.replace("{stderr}", f"{err.st_dev}:{err.st_ino}")
if sys.argv[3] == "main":
    from forwarder.service.cli import main
    sys.exit(main(sys.argv[4:]))
from forwarder.service.activation import listen_sockets
listeners = listen_sockets(os.environ)
print(json.dumps({
    "names": [listener.name for listener in listeners],
    "ports": [listener.port for listener in listeners],
    "blocking": [listener.sock.getblocking() for listener in listeners],
    "inheritable": [os.get_inheritable(listener.sock.fileno()) for listener in listeners],
    "left": sorted(key for key in os.environ if key.startswith("LISTEN_")),
}))
"""


IPPROTO_UDPLITE = 136


def launch(
    fds: Sequence[int],
    argv: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    mode: str = "main",
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the forwarder (or only its activation adapter) with `fds` at 3.. and LISTEN_* in `env`."""
    activation = {"LISTEN_PID": "{pid}", "LISTEN_FDS": str(len(fds))} if env is None else env
    child_env = python_env()
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM"):
        child_env.pop(key, None)
    return subprocess.run(
        [*prefix, sys.executable, "-c", LAUNCH, json.dumps(list(fds)), json.dumps(activation), mode, *argv],
        pass_fds=tuple(fds),
        env=child_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def run_until_waiting(
    fds: Sequence[int],
    argv: Sequence[str],
    notify_path: Path,
    timeout: float = 20.0,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Start the forwarder with `fds`, wait for READY=1 and then until it sleeps in epoll_wait (past the
    first wait of its loop), stop it with SIGTERM and return how it ended. Fails if it exits by itself."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(notify_path))
        manager.settimeout(timeout)
        activation = {"LISTEN_PID": "{pid}", "LISTEN_FDS": str(len(fds)), "NOTIFY_SOCKET": str(notify_path)}
        child_env = python_env()
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM"):
            child_env.pop(key, None)
        argv = [
            *prefix,
            sys.executable,
            "-c",
            LAUNCH,
            json.dumps(list(fds)),
            json.dumps(activation),
            "main",
            *argv,
        ]
        with subprocess.Popen(
            argv, pass_fds=tuple(fds), env=child_env, stderr=subprocess.PIPE, text=True
        ) as process:
            try:
                while b"READY=1" not in manager.recv(4096):
                    pass
                deadline = time.monotonic() + timeout
                wchan = Path(f"/proc/{process.pid}/wchan")
                while process.poll() is None and wchan.read_text() != "do_epoll_wait":
                    assert time.monotonic() < deadline, "the forwarder never waited in epoll_wait"
                    time.sleep(0.01)
                assert process.poll() is None, f"exited {process.returncode} after READY=1"
                process.send_signal(signal.SIGTERM)
                _, stderr = process.communicate(timeout=timeout)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
    return subprocess.CompletedProcess(argv, process.returncode, "", stderr)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("systemd-transparent-udp-forwarderd: ")
    return lines[0]


@pytest.fixture
def udp4() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.fixture
def udp6_v6only() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::1", 0))
        yield sock


def test_activation_reads_names_makes_sockets_nonblocking_and_unsets_the_variables(
    udp4: socket.socket,
) -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp6:
        udp6.bind(("::1", 0))
        env = {"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "game:dns"}
        result = launch([udp4.fileno(), udp6.fileno()], env=env, mode="probe")
        assert result.returncode == 0, result.stderr
        seen = json.loads(result.stdout)
        assert seen == {
            "names": ["game", "dns"],
            "ports": [udp4.getsockname()[1], udp6.getsockname()[1]],
            "blocking": [False, False],
            "inheritable": [False, False],
            "left": [],
        }


def test_no_sockets_is_a_configuration_error() -> None:
    result = launch([], ["192.0.2.2"], env={})
    assert result.returncode == 78
    assert "no systemd sockets received" in one_error_line(result)


def test_zero_listen_fds_is_a_configuration_error() -> None:
    result = launch([], ["192.0.2.2"], env={"LISTEN_PID": "{pid}", "LISTEN_FDS": "0"})
    assert result.returncode == 78
    assert "LISTEN_FDS=0" in one_error_line(result)


def test_listen_pid_of_another_process_is_refused(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], ["192.0.2.2"], env={"LISTEN_PID": "1", "LISTEN_FDS": "1"})
    assert result.returncode == 78
    assert "LISTEN_PID='1' is not our pid" in one_error_line(result)


def test_listen_fds_of_non_ascii_digits_is_refused_not_a_crash(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], ["192.0.2.2"], env={"LISTEN_PID": "{pid}", "LISTEN_FDS": "\u00b2"})
    assert result.returncode == 78
    assert "is not a number" in one_error_line(result)


def test_listen_fds_that_is_not_a_number_is_refused(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], ["192.0.2.2"], env={"LISTEN_PID": "{pid}", "LISTEN_FDS": "one"})
    assert result.returncode == 78
    assert "LISTEN_FDS='one' is not a number" in one_error_line(result)


def test_listen_fdnames_naming_a_different_count_of_sockets_is_refused(udp4: socket.socket) -> None:
    env = {"LISTEN_PID": "{pid}", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "game:dns"}
    result = launch([udp4.fileno()], ["192.0.2.2"], env=env)
    assert result.returncode == 78
    assert "LISTEN_FDNAMES='game:dns' names 2 sockets but LISTEN_FDS=1" in one_error_line(result)


def test_a_listen_fd_that_is_not_open_is_refused(udp4: socket.socket) -> None:
    result = launch(
        [udp4.fileno()], ["192.0.2.2", "192.0.2.3"], env={"LISTEN_PID": "{pid}", "LISTEN_FDS": "2"}
    )
    assert result.returncode == 78
    assert "inherited fd 4 is not open" in one_error_line(result)


def test_more_sockets_than_destinations_is_refused(udp4: socket.socket) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        second.bind(("127.0.0.1", 0))
        result = launch([udp4.fileno(), second.fileno()], ["192.0.2.2"])
    assert result.returncode == 78
    assert "received 2 sockets but 1 destinations" in one_error_line(result)


def test_a_stream_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind(("127.0.0.1", 0))
        result = launch([tcp.fileno()], ["192.0.2.2"])
    assert result.returncode == 78
    assert "is a SOCK_STREAM socket: expected SOCK_DGRAM" in one_error_line(result)


def test_a_datagram_socket_of_another_protocol_than_udp_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_UDPLITE) as udplite:
        udplite.bind(("127.0.0.1", 0))
        result = launch([udplite.fileno()], ["192.0.2.2"])
    assert result.returncode == 78
    assert "datagram socket of IP protocol 136: expected UDP (17)" in one_error_line(result)


def test_a_fd_that_is_not_a_socket_is_refused() -> None:
    read_end, write_end = os.pipe()
    try:
        result = launch([read_end], ["192.0.2.2"])
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 78
    assert "inherited fd 3 is not a socket" in one_error_line(result)


def test_an_af_unix_datagram_socket_is_refused() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        result = launch([left.fileno()], ["192.0.2.2"])
    assert result.returncode == 78
    assert "is an AF_UNIX socket: expected AF_INET or AF_INET6" in one_error_line(result)


@pytest.mark.parametrize("port", ["0", "65536", "-1", "abc"])
def test_bad_ports_are_usage_errors(udp4: socket.socket, port: str) -> None:
    result = launch([udp4.fileno()], [f"192.0.2.2:{port}"])
    assert result.returncode == 64
    assert f"bad port {port!r}" in one_error_line(result)


def test_empty_destination_is_a_usage_error(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], [""])
    assert result.returncode == 64
    assert "empty destination ''" in one_error_line(result)


def test_unresolvable_host_exits_68(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], ["no-such-host.invalid:53"])
    assert result.returncode == 68
    assert "cannot resolve host 'no-such-host.invalid'" in one_error_line(result)


def test_ambiguous_ipv6_without_brackets_is_a_usage_error(udp6_v6only: socket.socket) -> None:
    result = launch([udp6_v6only.fileno()], ["2001:db8::2:53"])
    assert result.returncode == 64
    assert "ambiguous IPv6 destination '2001:db8::2:53'" in one_error_line(result)


def test_unknown_socket_name_is_refused(udp4: socket.socket) -> None:
    env = {"LISTEN_PID": "{pid}", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "game"}
    result = launch([udp4.fileno()], ["dns=192.0.2.2"], env=env)
    assert result.returncode == 78
    assert "no socket is named 'dns'" in one_error_line(result)


def test_a_socket_name_given_twice_is_a_usage_error(udp4: socket.socket) -> None:
    env = {"LISTEN_PID": "{pid}", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "game"}
    result = launch([udp4.fileno()], ["game=192.0.2.2", "game=192.0.2.3"], env=env)
    assert result.returncode == 64
    assert "socket name 'game' is given more than one destination" in one_error_line(result)


def test_ipv6_destination_for_an_ipv4_socket_is_refused(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], ["[2001:db8::2]:53"])
    assert result.returncode == 78
    # Unnamed (no LISTEN_FDNAMES), the socket is named by its address.
    assert f"is AF_INET6 but socket '127.0.0.1:{udp4.getsockname()[1]}' only has AF_INET clients" in (
        one_error_line(result)
    )


def test_ipv4_destination_for_a_v6only_socket_is_refused(udp6_v6only: socket.socket) -> None:
    result = launch([udp6_v6only.fileno()], ["192.0.2.2:53"])
    assert result.returncode == 78
    assert "only has AF_INET6 clients" in one_error_line(result)


def test_destination_equal_to_the_listening_address_is_a_loop(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], [f"127.0.0.1:{udp4.getsockname()[1]}"])
    assert result.returncode == 78
    assert "not a loop" in one_error_line(result)


def test_destination_on_a_local_address_of_a_wildcard_listener_is_a_loop() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as dual:
        dual.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        dual.bind(("::", 0))
        result = launch([dual.fileno()], [f"127.0.0.1:{dual.getsockname()[1]}"])
    assert result.returncode == 78
    assert "is our own listening socket" in one_error_line(result)


def test_destination_that_is_another_of_our_sockets_is_a_loop(udp4: socket.socket) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        second.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{second.getsockname()[1]}"
        result = launch([udp4.fileno(), second.fileno()], ["192.0.2.2", target])
    assert result.returncode == 78
    assert "is our own listening socket" in one_error_line(result)


def test_unknown_option_is_a_usage_error() -> None:
    result = launch([], ["--frobnicate", "192.0.2.2"], env={})
    assert result.returncode == 64
    assert "unrecognized arguments: --frobnicate" in one_error_line(result)


def test_mixing_positional_and_named_destinations_is_a_usage_error() -> None:
    result = launch([], ["192.0.2.2", "dns=192.0.2.3"], env={})
    assert result.returncode == 64
    assert "expected all destinations positional (DEST...) or all named" in one_error_line(result)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_stats_interval_must_be_a_positive_number(value: str) -> None:
    result = launch([], ["--stats-interval", value, "192.0.2.2"], env={})
    assert result.returncode == 64
    assert f"--stats-interval: {value!r}" in one_error_line(result)


@pytest.mark.parametrize("option", ["--stats-interval", "--flow-idle-timeout"])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
def test_a_non_finite_interval_is_a_usage_error_naming_it(option: str, value: str) -> None:
    result = launch([], [f"{option}={value}", "192.0.2.2"], env={})
    assert result.returncode == 64
    assert f"{option}: {value!r} is not a finite number of seconds" in one_error_line(result)


@pytest.mark.parametrize("option", ["--stats-interval", "--flow-idle-timeout"])
@pytest.mark.parametrize("value", ["1e-300", "0.049"])
def test_an_interval_below_the_minimum_is_a_usage_error_naming_the_minimum(option: str, value: str) -> None:
    result = launch([], [option, value, "192.0.2.2"], env={})
    assert result.returncode == 64
    assert f"{option}: {value!r} must be at least 0.05 seconds" in one_error_line(result)


@pytest.mark.skipif(os.geteuid() != 0, reason="running the forwarder needs CAP_NET_ADMIN (IP_TRANSPARENT)")
def test_intervals_longer_than_epoll_can_wait_run_and_stop_cleanly(
    udp4: socket.socket, tmp_path: Path
) -> None:
    # Both intervals above the ~24.8 days epoll_wait accepts: the first wait raised OverflowError.
    argv = ["--stats-interval", "3e6", "--flow-idle-timeout", "6e6", "192.0.2.2:53"]
    result = run_until_waiting([udp4.fileno()], argv, tmp_path / "notify.sock")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["3000000000", "2147483648", "0", "-5"])
def test_a_receive_buffer_out_of_range_is_a_usage_error_naming_it(value: str) -> None:
    result = launch([], ["--receive-buffer", value, "192.0.2.2"], env={})
    assert result.returncode == 64
    line = one_error_line(result)
    assert f"--receive-buffer: {value!r}" in line
    assert "expected 1 to 2147483647 bytes" in line


@pytest.mark.parametrize("path", ["", "/", ".", "{tmp}", "{tmp}/"])
def test_a_metrics_file_that_names_no_file_is_refused_at_start_up(path: str, tmp_path: Path) -> None:
    path = path.replace("{tmp}", str(tmp_path))
    result = launch([], ["--metrics-file", path, "192.0.2.2"], env={})
    assert result.returncode == 64
    assert f"--metrics-file: {path!r} is " in one_error_line(result)


def test_unknown_log_level_is_a_usage_error() -> None:
    result = launch([], ["--log-level", "loud", "192.0.2.2"], env={})
    assert result.returncode == 64
    assert "invalid choice: 'loud'" in one_error_line(result)


def test_an_unknown_reply_mode_is_a_usage_error_naming_the_value() -> None:
    result = launch([], ["--reply", "bounce", "192.0.2.2"], env={})
    assert result.returncode == 64
    assert "invalid choice: 'bounce' (choose from 'direct', 'relay')" in one_error_line(result)


def test_listen_on_an_address_in_use_is_an_os_error(udp4: socket.socket) -> None:
    held = f"127.0.0.1:{udp4.getsockname()[1]}"
    result = launch([], ["--listen", held, "192.0.2.2"], env={})
    assert result.returncode == 71
    assert f"cannot listen on {held!r}: Address already in use" in one_error_line(result)


def test_listen_without_a_port_is_a_usage_error() -> None:
    result = launch([], ["--listen", "127.0.0.1", "192.0.2.2"], env={})
    assert result.returncode == 64
    assert "--listen address '127.0.0.1' has no port" in one_error_line(result)


def test_listen_together_with_socket_activation_is_refused(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], ["--listen", "127.0.0.1:9", "192.0.2.2"])
    assert result.returncode == 78
    assert "--listen was given" in one_error_line(result)


def test_errors_carry_a_journal_priority_when_stderr_is_the_journal() -> None:
    result = launch([], ["192.0.2.2"], env={"JOURNAL_STREAM": "{stderr}"})
    assert result.returncode == 78
    assert result.stderr.startswith("<3>systemd-transparent-udp-forwarderd: no systemd sockets received")


def test_named_destinations_with_listen_are_a_usage_error() -> None:
    result = launch([], ["--listen", "127.0.0.1:9", "dns=192.0.2.2"], env={})
    assert result.returncode == 64
    assert "NAME=DEST needs named sockets from socket activation" in one_error_line(result)


def test_help_and_version_exit_zero() -> None:
    help_result = launch([], ["--help"], env={})
    version_result = launch([], ["--version"], env={})
    assert help_result.returncode == 0
    assert "--listen ADDR:PORT" in help_result.stdout
    assert "--max-flows" in help_result.stdout
    assert version_result.returncode == 0
    assert version_result.stdout.strip() == "systemd-transparent-udp-forwarderd 0.1.0"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping a capability needs root (CAP_SETPCAP)")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
@pytest.mark.parametrize(
    ("send_path", "what"),
    [
        (
            [],
            "cannot open a raw socket (CAP_NET_RAW) nor set IP_TRANSPARENT for per-client sockets "
            "(CAP_NET_RAW or CAP_NET_ADMIN)",
        ),
        (["--send-path", "sockets"], "cannot set IP_TRANSPARENT (CAP_NET_RAW or CAP_NET_ADMIN allows it)"),
    ],
    ids=["raw", "sockets"],
)
def test_without_net_raw_and_net_admin_exits_77_naming_both_and_the_ambient_capabilities_hint(
    udp4: socket.socket, send_path: list[str], what: str
) -> None:
    # IP_TRANSPARENT is allowed with CAP_NET_ADMIN or CAP_NET_RAW, so both are dropped.
    drop = ["setpriv", "--inh-caps=-net_admin,-net_raw", "--bounding-set=-net_admin,-net_raw", "--"]
    result = launch([udp4.fileno()], [*send_path, "192.0.2.2:53"], prefix=drop)
    assert result.returncode == 77
    line = one_error_line(result)
    assert f"{what}: neither CAP_NET_RAW nor CAP_NET_ADMIN is held" in line
    assert "AmbientCapabilities=CAP_NET_RAW" in line


@pytest.mark.parametrize(
    ("family", "destination", "expected"),
    [
        (4, "0.0.0.0:53", "(0.0.0.0:53) is the unspecified address"),
        (6, "[::]:53", "([::]:53) is the unspecified address"),
        (4, "255.255.255.255:53", "(255.255.255.255:53) is the limited broadcast address"),
        # lo's 127.0.0.0/8 has the directed broadcast 127.255.255.255 on every Linux host.
        (
            4,
            "127.255.255.255:53",
            "(127.255.255.255:53) is the broadcast address of one of this host's subnets",
        ),
        (4, "224.0.0.1:53", "(224.0.0.1:53) is a multicast address"),
        (6, "[ff02::1]:53", "([ff02::1]:53) is a multicast address"),
    ],
)
def test_a_destination_that_is_no_single_backend_is_refused_naming_it(
    udp4: socket.socket, udp6_v6only: socket.socket, family: int, destination: str, expected: str
) -> None:
    listener = udp4 if family == 4 else udp6_v6only
    result = launch([listener.fileno()], [destination])
    assert result.returncode == 78
    line = one_error_line(result)
    assert f"destination {destination!r} {expected}" in line
    assert "expected the unicast address of a backend" in line


@pytest.mark.parametrize(
    ("destination", "host", "read_as"),
    [
        ("192.0.2:5353", "192.0.2", "192.0.0.2"),
        ("3221225986", "3221225986", "192.0.2.2"),
        ("0xc0000202:53", "0xc0000202", "192.0.2.2"),
        ("010.0.0.1:53", "010.0.0.1", "8.0.0.1"),
    ],
)
def test_a_shorthand_ipv4_destination_is_refused_as_ambiguous(
    udp4: socket.socket, destination: str, host: str, read_as: str
) -> None:
    result = launch([udp4.fileno()], [destination])
    assert result.returncode == 78
    assert (
        f"destination {destination!r} has the shorthand IPv4 address {host!r}, which the resolver reads as "
        f"{read_as}"
    ) in one_error_line(result)


def test_a_v4_mapped_destination_is_the_ipv4_destination_it_stands_for(udp6_v6only: socket.socket) -> None:
    # An IPv6-only socket cannot serve it: refused at start-up instead of dropping every datagram.
    result = launch([udp6_v6only.fileno()], ["[::ffff:192.0.2.2]:5353"])
    assert result.returncode == 78
    assert "'[::ffff:192.0.2.2]:5353' (192.0.2.2:5353) is AF_INET but socket" in one_error_line(result)


def test_a_socket_name_containing_an_equals_sign_can_be_named(udp4: socket.socket) -> None:
    env = {"LISTEN_PID": "{pid}", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "dns=v4"}
    # An IPv6 destination makes start-up fail after mapping, with the socket's name in the message.
    result = launch([udp4.fileno()], ["dns=v4=[2001:db8::2]:53"], env=env)
    assert result.returncode == 78
    assert "is AF_INET6 but socket 'dns=v4' bound to 127.0.0.1:" in one_error_line(result)


def test_a_socket_with_an_empty_name_cannot_be_named_and_the_error_says_what_to_do(
    udp4: socket.socket,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
        second.bind(("127.0.0.1", 0))
        env = {"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "game:"}
        result = launch([udp4.fileno(), second.fileno()], ["game=192.0.2.2"], env=env)
    assert result.returncode == 78
    line = one_error_line(result)
    assert "socket 2 of 2 has an empty name in LISTEN_FDNAMES, so NAME=DEST cannot name it" in line
    assert "=DEST" not in line.replace("NAME=DEST", "")  # never suggests the refused `=DEST`


def test_an_empty_socket_name_on_the_command_line_is_refused_without_contradiction() -> None:
    result = launch([], ["=192.0.2.2"], env={})
    assert result.returncode == 64
    assert "empty socket name in '=192.0.2.2': expected NAME=DEST with a NAME, or a DEST" in one_error_line(
        result
    )


def test_a_5000_digit_listen_fds_is_cut_in_the_message(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], ["192.0.2.2"], env={"LISTEN_PID": "{pid}", "LISTEN_FDS": "9" * 5000})
    assert result.returncode == 78
    line = one_error_line(result)
    assert f"LISTEN_FDS={'9' * 60!r}... (5000 characters) is not a number" in line
    assert len(line) < 200


def test_an_unbound_inherited_socket_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unbound:
        result = launch([unbound.fileno()], ["192.0.2.2"])
    assert result.returncode == 78
    assert "inherited fd 3 is a UDP socket bound to no port: expected a listening socket" in one_error_line(
        result
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="running the forwarder needs CAP_NET_ADMIN (IP_TRANSPARENT)")
def test_a_socket_systemd_gave_no_name_is_named_by_its_address_in_the_log(
    udp4: socket.socket, tmp_path: Path
) -> None:
    result = run_until_waiting([udp4.fileno()], ["192.0.2.2:53"], tmp_path / "notify.sock")
    assert result.returncode == 0, result.stderr
    assert f"forwarding 127.0.0.1:{udp4.getsockname()[1]} -> 192.0.2.2:53" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping a capability needs root (CAP_SETPCAP)")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_send_proxy_protocol_starts_without_any_capability(udp4: socket.socket, tmp_path: Path) -> None:
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]  # root without a capability
    argv = ["--send-proxy-protocol", "192.0.2.2:53"]
    result = run_until_waiting([udp4.fileno()], argv, tmp_path / "notify.sock", prefix=drop)
    assert result.returncode == 0, result.stderr
    assert "IP_TRANSPARENT" not in result.stderr


def test_send_proxy_protocol_with_reply_direct_exits_64_naming_both(udp4: socket.socket) -> None:
    result = launch([udp4.fileno()], ["--send-proxy-protocol", "--reply", "direct", "192.0.2.2:53"])
    assert result.returncode == 64
    assert "--reply direct with --send-proxy-protocol" in one_error_line(result)


@pytest.mark.parametrize("network", ["198.51.100.1/24", "198.51.100.0/33", "lb.example", ""])
def test_a_bad_proxy_protocol_network_exits_64_naming_it(udp4: socket.socket, network: str) -> None:
    result = launch([udp4.fileno()], ["--proxy-protocol-from", network, "192.0.2.2:53"])
    assert result.returncode == 64
    assert f"--proxy-protocol-from: {network!r} is not a network" in one_error_line(result)


def test_a_v4_mapped_proxy_protocol_network_is_read_as_the_ipv4_network_it_maps() -> None:
    args = build_parser().parse_args(["--proxy-protocol-from", "::ffff:198.51.100.0/120", "192.0.2.2:53"])
    assert args.proxy_protocol_from == [ipaddress.ip_network("198.51.100.0/24")]


@pytest.mark.skipif(os.geteuid() != 0, reason="running the forwarder needs CAP_NET_ADMIN (IP_TRANSPARENT)")
def test_proxy_protocol_in_and_out_together_start(udp4: socket.socket, tmp_path: Path) -> None:
    argv = ["--proxy-protocol-from", "198.51.100.0/24", "--proxy-protocol-from", "2001:db8::/32",
            "--send-proxy-protocol", "192.0.2.2:53"]  # fmt: skip
    result = run_until_waiting([udp4.fileno()], argv, tmp_path / "notify.sock")
    assert result.returncode == 0, result.stderr
