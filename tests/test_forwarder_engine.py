"""The engine's receive path with real UDP sockets on loopback, no privileges: truncated datagrams are
never forwarded, empty ones are, and one bad datagram never stops the draining of the next ones.

A truncated datagram cannot be produced through the kernel with the engine's 64 KiB buffer (no UDP payload
is larger), so these tests give the engine a smaller buffer: the MSG_TRUNC path is the same. Every test runs
on both receive paths: one recvmsg per datagram, and batches through recvmmsg.
"""

import socket
from collections.abc import Iterator

import pytest

from forwarder.activation import ListeningSocket
from forwarder.batch import BatchReceiver, decode_sockaddr
from forwarder.core import DropReason, SockAddr
from forwarder.destination import Destination
from forwarder.engine import Engine, Route
from forwarder.notify import Notifier
from forwarder.sender import FlowKey, Outcome, Sender


class RecordingSender(Sender):
    """A real Sender that also records what the engine handed it."""

    def __init__(self) -> None:
        super().__init__(max_flows=8, idle_timeout=60)
        self.handed: list[tuple[bytes, SockAddr]] = []

    def _send(
        self,
        payload: memoryview,
        key: FlowKey,
        client: SockAddr | bytes,
        destination: Destination,
        now: float,
    ) -> Outcome:
        self.handed.append((bytes(payload), decode_sockaddr(client) if isinstance(client, bytes) else client))
        return super()._send(payload, key, client, destination, now)


@pytest.fixture(params=["single", "batch"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock


def engine_for(
    listener: socket.socket, buffer_size: int, mode: str = "single"
) -> tuple[Engine, RecordingSender, Route]:
    sender = RecordingSender()
    route = Route(ListeningSocket(listener, "test"), Destination(socket.AF_INET, "192.0.2.2", 53))
    receiver = BatchReceiver.create(batch=8, buffer_size=buffer_size) if mode == "batch" else None
    if mode == "batch":
        assert receiver is not None, "this libc has recvmmsg: the batch path must be tested"
    engine = Engine([route], Notifier({}), sender, buffer_size=buffer_size, receiver=receiver)
    return engine, sender, route


def send_all(target: socket.socket, payloads: list[bytes]) -> SockAddr:
    """Send `payloads` to `target` from a fresh loopback client; return the client's address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        for payload in payloads:
            client.sendto(payload, target.getsockname())
        return client.getsockname()  # type: ignore[no-any-return]


def test_a_truncated_datagram_is_dropped_and_counted_never_forwarded(
    listener: socket.socket, mode: str
) -> None:
    engine, sender, route = engine_for(listener, buffer_size=64, mode=mode)
    client = send_all(listener, [b"x" * 100, b"fits"])
    engine.drain(route)
    assert sender.handed == [(b"fits", client)]
    assert engine.counters.dropped["truncated"] == 1


def test_an_empty_datagram_is_handed_on_not_ignored(listener: socket.socket, mode: str) -> None:
    engine, sender, route = engine_for(listener, buffer_size=64, mode=mode)
    client = send_all(listener, [b""])
    engine.drain(route)
    assert sender.handed == [(b"", client)]


def test_draining_continues_after_drops_until_the_socket_is_empty(listener: socket.socket, mode: str) -> None:
    engine, sender, route = engine_for(listener, buffer_size=65536, mode=mode)
    payloads = [bytes([n]) * n for n in range(1, 21)]
    send_all(listener, payloads)
    engine.drain(route)
    assert [payload for payload, _ in sender.handed] == payloads
    # A loopback client cannot be presented as a source: every one is dropped and counted, none stops it.
    assert engine.counters.dropped == {DropReason.LOOPBACK_SOURCE.value: 20}
    with pytest.raises(BlockingIOError):
        listener.recv(1)


def test_status_line_reports_the_interval_and_resets_it(listener: socket.socket) -> None:
    engine, _, route = engine_for(listener, buffer_size=64)
    send_all(listener, [b"x" * 100])
    engine.drain(route)
    name = f"forwarder-engine-test-{id(engine)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        engine.notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        engine.report_status()
        engine.report_status()
        first, second = manager.recv(4096), manager.recv(4096)
        engine.notifier.close()
    assert first == (
        b"STATUS=0 datagrams forwarded in the last 10 seconds, 1 dropped (truncated 1);"
        b" since start 0 forwarded, 1 dropped; 0 flows."
    )
    assert second.startswith(b"STATUS=0 datagrams forwarded in the last 10 seconds, 0 dropped;")
