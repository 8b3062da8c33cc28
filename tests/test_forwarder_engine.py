"""The engine's receive path with real UDP sockets on loopback, no privileges: truncated datagrams are
never forwarded, empty ones are, and one bad datagram never stops the draining of the next ones.

A truncated datagram cannot be produced through the kernel with the engine's 64 KiB buffer (no UDP payload
is larger), so these tests give the engine a smaller buffer: the MSG_TRUNC path is the same. Every test runs
on both receive paths: one recvmsg per datagram, and batches through recvmmsg.
"""

import os
import socket
from collections.abc import Iterator

import pytest
from forwarder_helpers import drain

from forwarder.core.actions import Action, CloseFlows, Drop, OpenFlow
from forwarder.core.addresses import SockAddr, decode_sockaddr, sockaddr_bytes
from forwarder.core.counters import DropReason
from forwarder.core.destination import Destination
from forwarder.core.flows import Flow
from forwarder.core.machine import ForwardingMachine
from forwarder.io.engine import Engine
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.io.receive import RELAY_BATCH
from forwarder.io.sockets import set_receive_buffer
from forwarder.service.notify import Notifier


class RecordingEngine(Engine):
    """A real Engine that also records every datagram its receive strategy handed on: payload, client,
    and what the machine made of it (a drop's reason, or the kind of send)."""

    handed: list[tuple[bytes, SockAddr, str]]

    def execute(self, route: Route, action: Action, payload: memoryview) -> None:
        client = action.flow.raw_peer if isinstance(action, OpenFlow) else getattr(action, "client", None)
        outcome = action.key if isinstance(action, Drop) else type(action).__name__
        self.handed.append((bytes(payload), decode_sockaddr(client) if client else ("?", 0), outcome))
        super().execute(route, action, payload)

    def send(self, flow: Flow, payload: memoryview, header: bytearray | None = None) -> None:
        self.handed.append((bytes(payload), decode_sockaddr(flow.raw_peer), "send"))
        super().send(flow, payload, header)


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
) -> tuple[RecordingEngine, Route]:
    """A recording engine with one route from `listener`, receiving with the strategy `mode` names."""
    route = Route(ListeningSocket(listener, "test"), Destination(socket.AF_INET, "192.0.2.2", 53))
    engine = RecordingEngine(
        [route],
        Notifier({}),
        ForwardingMachine(max_flows=8, idle_timeout=60),
        receive_strategy=mode,
        batch=8,
        buffer_size=buffer_size,
    )
    engine.handed = []
    assert type(engine.strategy).__name__ == ("BatchReceive" if mode == "batch" else "SingleReceive")
    return engine, route


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
    engine, route = engine_for(listener, buffer_size=64, mode=mode)
    client = send_all(listener, [b"x" * 100, b"fits"])
    drain(engine, route)
    # The cut datagram is dropped as truncated; the one that fits goes on (and its loopback source is
    # then refused: nothing in this test can be sent).
    assert engine.handed == [(b"x" * 64, client, "truncated"), (b"fits", client, "loopback-source")]
    assert engine.counters.dropped["truncated"] == 1
    assert engine.counters.forwarded == 0


def test_an_empty_datagram_is_handed_on_not_ignored(listener: socket.socket, mode: str) -> None:
    engine, route = engine_for(listener, buffer_size=64, mode=mode)
    client = send_all(listener, [b""])
    drain(engine, route)
    assert engine.handed == [(b"", client, "loopback-source")]


def test_draining_continues_after_drops_until_the_socket_is_empty(listener: socket.socket, mode: str) -> None:
    engine, route = engine_for(listener, buffer_size=65536, mode=mode)
    payloads = [bytes([n]) * n for n in range(1, 21)]
    send_all(listener, payloads)
    drain(engine, route)
    assert [payload for payload, _, _ in engine.handed] == payloads
    # A loopback client cannot be presented as a source: every one is dropped and counted, none stops it.
    assert engine.counters.dropped == {DropReason.LOOPBACK_SOURCE.value: 20}
    with pytest.raises(BlockingIOError):
        listener.recv(1)


def test_status_line_reports_the_interval_and_resets_it(listener: socket.socket) -> None:
    engine, route = engine_for(listener, buffer_size=64)
    send_all(listener, [b"x" * 100])
    drain(engine, route)
    name = f"forwarder-engine-test-{id(engine)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        engine.notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        start = engine.interval_start
        engine.report_status(start + 10)
        engine.report_status(start + 20)
        first, second = manager.recv(4096), manager.recv(4096)
        engine.notifier.close()
    assert first == (
        b"STATUS=0 datagrams forwarded in the last 10 seconds, 1 dropped (truncated 1);"
        b" since start 0 forwarded, 1 dropped; 0 flows."
    )
    assert second.startswith(b"STATUS=0 datagrams forwarded in the last 10 seconds, 0 dropped;")


def test_a_truncated_datagram_between_two_of_one_open_flow_ends_the_run_and_costs_only_itself() -> None:
    # Client A's flow is open (a plain socket stands in for its transparent one: what it sends counts);
    # a truncated datagram of client C sits between two of A's in one batch.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as backend,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a_flow,
    ):
        for sock in (backend, listener, a, c, a_flow):
            sock.bind(("127.0.0.1", 0))
        backend.settimeout(2)
        listener.setblocking(False)
        destination = Destination(socket.AF_INET, "127.0.0.1", backend.getsockname()[1])
        route = Route(ListeningSocket(listener, "test"), destination)
        machine = ForwardingMachine(max_flows=8, idle_timeout=60)
        raw = sockaddr_bytes(socket.AF_INET, a.getsockname())
        machine.flow_opened(Flow((destination.sockaddr, raw), route.path, a.getsockname()), a_flow)
        engine = Engine([route], Notifier({}), machine, batch=8, buffer_size=16)
        assert type(engine.strategy).__name__ == "BatchReceive"
        a.sendto(b"A1", listener.getsockname())
        c.sendto(b"C" * 40, listener.getsockname())
        a.sendto(b"A2", listener.getsockname())

        drain(engine, route)

        assert [backend.recv(64), backend.recv(64)] == [b"A1", b"A2"]
        backend.settimeout(0.2)
        with pytest.raises(TimeoutError):
            backend.recv(64)
    assert engine.counters.forwarded == 2
    assert engine.counters.dropped == {"truncated": 1}


@pytest.mark.parametrize(("relay", "handled"), [(False, 300), (True, RELAY_BATCH)])
def test_with_replies_to_relay_a_listener_is_drained_in_shorter_turns(
    listener: socket.socket, mode: str, relay: bool, handled: int
) -> None:
    # The backend's replies wait in the flow sockets while a listener is drained: in relay mode a turn
    # is short, so they are read before their queues fill.
    set_receive_buffer(listener, 1 << 20)
    route = Route(ListeningSocket(listener, "test"), Destination(socket.AF_INET, "192.0.2.2", 53))
    engine = Engine([route], Notifier({}), ForwardingMachine(relay=relay), receive_strategy=mode)
    send_all(listener, [b"x"] * 300)

    drain(engine, route)

    assert sum(engine.counters.dropped.values()) == handled  # loopback sources: each one counted


@pytest.mark.skipif(os.geteuid() != 0, reason="queueing 1000 replies needs SO_RCVBUFFORCE (CAP_NET_ADMIN)")
def test_every_reply_still_queued_on_an_evicted_flow_is_counted_unmatched_not_only_256() -> None:
    # 1000 replies queued to an evicted flow's socket: 256 were counted, 744 vanished with the socket.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as backend,
    ):
        listener.bind(("127.0.0.1", 0))
        backend.bind(("127.0.0.1", 0))
        destination = Destination(socket.AF_INET, "127.0.0.1", backend.getsockname()[1])
        route = Route(ListeningSocket(listener, "dns"), destination)
        machine = ForwardingMachine(max_flows=8, idle_timeout=60, relay=True)
        engine = Engine([route], Notifier({}), machine)
        flow_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flow_socket.bind(("127.0.0.1", 0))
        set_receive_buffer(flow_socket, 4 << 20)
        client = ("127.0.0.1", 40000)
        flow = Flow((destination.sockaddr, sockaddr_bytes(socket.AF_INET, client)), route.path, client)
        machine.flow_opened(flow, flow_socket)
        for number in range(1000):  # loopback queues each before sendto returns
            backend.sendto(number.to_bytes(2, "big"), flow_socket.getsockname())

        engine.close_flows(CloseFlows((flow,)))

    assert flow_socket.fileno() == -1
    assert machine.counters.reply_dropped == {"reply-unmatched": 1000}
