"""The engine's failure paths with real sockets on loopback: a send refused by an earlier datagram's ICMP
error is sent again, a send failing on its own is one counted drop (on the flow sockets and on the raw
path), a flow socket that cannot be opened costs its datagram, and the backend's replies that cannot be
received or relayed are counted by reason, in relay mode (batched) and in direct mode (one by one).

A closed port on loopback answers with an ICMP port unreachable before sendto returns, so the errors the
kernel leaves pending are real ones; a closed socket stands in for a send that fails on its own (EBADF:
nothing leaves).
"""

import logging
import os
import socket
import time
from collections.abc import Iterator

import pytest
from forwarder_helpers import drain

from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.destination import Destination
from forwarder.core.flows import Flow
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import Settings
from forwarder.io.engine import Engine
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.io.rawsend import RawSend
from forwarder.io.sockets import set_receive_errors
from forwarder.service.notify import Notifier

CLIENT = ("203.0.113.7", 40000)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock


def closed_port() -> int:
    """A loopback UDP port nobody holds (just released): datagrams to it are refused by ICMP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def setup(
    listener: socket.socket, port: int, *, relay: bool, pktinfo: bool = False, raw: RawSend | None = None
) -> tuple[Engine, Route]:
    """An engine with one route from `listener` to 127.0.0.1:`port`."""
    destination = Destination(socket.AF_INET, "127.0.0.1", port)
    route = Route(ListeningSocket(listener, "test"), destination, pktinfo=pktinfo)
    machine = ForwardingMachine(
        Settings(max_flows=8, flow_idle_timeout=60, reply="relay" if relay else "direct")
    )
    return Engine([route], Notifier({}), machine, raw=raw), route


def flow_on(engine: Engine, route: Route, handle: socket.socket | None, local: bytes | None = None) -> Flow:
    """`CLIENT`'s flow on `route`, kept by the machine with `handle` as its socket."""
    raw_client = sockaddr_bytes(socket.AF_INET, CLIENT)
    flow = Flow((route.destination.sockaddr, raw_client), route.path, CLIENT, CLIENT, local)
    engine.machine.flow_opened(flow, handle)
    return flow


def refused_socket(port: int, *, connect: bool, receive_errors: bool) -> socket.socket:
    """A loopback UDP socket that sent one datagram to the closed `port`: the ICMP error is pending."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    if receive_errors:
        set_receive_errors(sock)
    if connect:
        sock.connect(("127.0.0.1", port))
        sock.send(b"first")
    else:
        sock.sendto(b"first", ("127.0.0.1", port))
    return sock


def test_a_send_failed_by_an_earlier_datagrams_icmp_error_is_sent_again_and_the_error_counted(
    listener: socket.socket,
) -> None:
    port = closed_port()
    engine, route = setup(listener, port, relay=False)
    with refused_socket(port, connect=False, receive_errors=True) as handle:
        flow = flow_on(engine, route, handle)

        engine.send(flow, memoryview(b"second"))  # fails with ECONNREFUSED: the first one's error

        assert engine.counters.dropped == {}
        assert engine.counters.icmp_errors == {"backend-unreachable": 1}
        # The second datagram did leave: its own refusal waits in the queue.
        assert len(engine.error_queues.read(flow)) == 1
        assert engine.counters.icmp_errors == {"backend-unreachable": 2}


def test_a_send_that_fails_on_its_own_is_one_counted_and_logged_send_error(
    listener: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    engine, route = setup(listener, closed_port(), relay=False)
    handle = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flow = flow_on(engine, route, handle)
    handle.close()

    with caplog.at_level(logging.INFO, logger="forwarder"):
        engine.send(flow, memoryview(b"lost"))

    assert engine.counters.dropped == {"send-error:EBADF": 1}
    assert "dropped datagram (send-error:EBADF) from 203.0.113.7:40000 on test" in caplog.text


def test_a_raw_send_that_fails_is_one_counted_send_error_after_its_error_queue_was_read(
    listener: socket.socket,
) -> None:
    # A plain UDP socket stands in for the raw one; closed, every send on it fails (EBADF), nothing leaves.
    stand_in = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw = RawSend([stand_in], 8, checksum=False)
    engine, route = setup(listener, closed_port(), relay=False, raw=raw)
    flow = Flow((route.destination.sockaddr, sockaddr_bytes(socket.AF_INET, CLIENT)), route.path, CLIENT)
    assert engine.open(flow)
    stand_in.close()

    engine.send(flow, memoryview(b"lost"))

    assert engine.counters.dropped == {"send-error:EBADF": 1}
    assert engine.counters.icmp_errors == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="binding a client's address needs CAP_NET_RAW or CAP_NET_ADMIN")
def test_a_flow_socket_that_cannot_be_opened_costs_its_datagram_and_keeps_no_flow(
    listener: socket.socket,
) -> None:
    engine, route = setup(listener, closed_port(), relay=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))  # a local program holds the source port: the bind must fail
        source = holder.getsockname()
        flow = Flow((route.destination.sockaddr, sockaddr_bytes(socket.AF_INET, source)), route.path, source)
        engine.counters.forwarded += 1  # the machine counted it forwarded when it asked for the flow

        assert not engine.open(flow)

    assert engine.counters.dropped == {"send-error:EADDRINUSE": 1}
    assert engine.counters.forwarded == 0
    assert engine.machine.flows.lookup(flow.key) is None


@pytest.mark.parametrize("relay", [True, False], ids=["relay-batched", "direct-one-by-one"])
def test_a_pending_error_that_is_no_queued_icmp_error_is_a_counted_reply_receive_error(
    listener: socket.socket, relay: bool
) -> None:
    # Connected and without IP_RECVERR, the refusal is pending on the socket but nothing is queued.
    port = closed_port()
    engine, route = setup(listener, port, relay=relay)
    with refused_socket(port, connect=True, receive_errors=False) as handle:
        flow = flow_on(engine, route, handle)

        engine.flow_ready(flow, time.monotonic())

    assert engine.counters.reply_dropped == {"reply-receive-error:ECONNREFUSED": 1}
    assert engine.counters.icmp_errors == {}


@pytest.mark.parametrize("relay", [True, False], ids=["relay-batched", "direct-one-by-one"])
def test_a_receive_failed_by_a_queued_icmp_error_counts_the_error_not_a_reply_drop(
    listener: socket.socket, relay: bool
) -> None:
    port = closed_port()
    engine, route = setup(listener, port, relay=relay)
    with refused_socket(port, connect=False, receive_errors=True) as handle:
        flow = flow_on(engine, route, handle)

        engine.gather(flow, time.monotonic(), errors=False)  # as if the poll had not said EPOLLERR

    assert engine.counters.reply_dropped == {}
    assert engine.counters.icmp_errors == {"backend-unreachable": 1}


def test_in_direct_mode_a_datagram_on_a_flow_socket_is_counted_never_relayed(listener: socket.socket) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as backend,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as handle,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        for sock in (backend, handle, client):
            sock.bind(("127.0.0.1", 0))
        handle.setblocking(False)
        engine, route = setup(listener, backend.getsockname()[1], relay=False)
        flow = flow_on(engine, route, handle)
        backend.sendto(b"reply", handle.getsockname())

        engine.flow_ready(flow, time.monotonic())

        assert engine.counters.reply_dropped == {"reply-in-direct-mode": 1}
        assert engine.counters.relayed == 0
        with pytest.raises(BlockingIOError):  # the listener sent nothing anywhere
            listener.recv(1)


def test_a_reply_whose_clients_local_address_is_unknown_is_dropped_not_sent_from_another(
    listener: socket.socket,
) -> None:
    # The client's datagram had its control messages cut short (local = b""): a reply from the wrong
    # address would be rejected by the client, so it is counted and dropped, in the batch and one by one.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as backend,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as handle,
    ):
        backend.bind(("127.0.0.1", 0))
        handle.bind(("127.0.0.1", 0))
        handle.setblocking(False)
        engine, route = setup(listener, backend.getsockname()[1], relay=True, pktinfo=True)
        flow = flow_on(engine, route, handle, local=b"")
        backend.sendto(b"reply", handle.getsockname())

        engine.flow_ready(flow, time.monotonic())
        assert engine.counters.reply_dropped == {"reply-send-error:EADDRNOTAVAIL": 1}

        engine.counters.relayed += 1  # the machine counts a reply relayed before it is sent
        engine.relay(flow, memoryview(b"reply"))
        assert engine.counters.reply_dropped == {"reply-send-error:EADDRNOTAVAIL": 2}
        assert engine.counters.relayed == 0


@pytest.mark.parametrize(
    ("mode", "raw_path"),
    [("single", False), ("batch", False), ("batch", True)],
    ids=["one-by-one", "batched", "batched-raw-path"],
)
def test_a_listener_whose_receive_fails_is_one_counted_receive_error_and_its_drain_ends(
    listener: socket.socket, mode: str, raw_path: bool
) -> None:
    # A closed listener stands in for any receive error that is not EAGAIN: counted once, never a loop.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stand_in:
        raw = RawSend([stand_in], 8, checksum=False) if raw_path else None
        route = Route(ListeningSocket(listener, "test"), Destination(socket.AF_INET, "127.0.0.1", 9))
        engine = Engine(
            [route], Notifier({}), ForwardingMachine(Settings(max_flows=8, receive=mode)), raw=raw
        )
        listener.close()

        drain(engine, route)

    assert engine.counters.dropped == {"receive-error:EBADF": 1}
    assert engine.counters.forwarded == 0
