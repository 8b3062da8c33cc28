"""sd_notify with the standard library, checked against real AF_UNIX datagram sockets (path and abstract)."""

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder.service.notify import Notifier, watchdog_interval


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


def test_notify_sends_one_datagram_of_key_value_lines_to_a_path_socket(
    path_listener: tuple[socket.socket, str],
) -> None:
    sock, path = path_listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    try:
        assert notifier.notify(READY="1", STATUS="Up and running.")
        assert sock.recv(4096) == b"READY=1\nSTATUS=Up and running."
    finally:
        notifier.close()


def test_notify_reaches_an_abstract_socket_written_with_an_at_sign() -> None:
    name = f"forwarder-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.notify(WATCHDOG="1")
            assert sock.recv(4096) == b"WATCHDOG=1"
        finally:
            notifier.close()


def test_without_notify_socket_notify_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.notify(READY="1")


def test_a_vanished_manager_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    try:
        assert notifier.notify(STATUS="x") is False
    finally:
        notifier.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_pings_at_half_the_timeout_only_when_meant_for_us(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_a_manager_that_stops_reading_never_blocks_the_forwarder(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        try:
            # The manager's queue holds a few hundred datagrams; past that a blocking send would hang here.
            results = [notifier.notify(STATUS="x" * 1000) for _ in range(5000)]
        finally:
            notifier.close()
    assert results[0] is True
    assert results[-1] is False
