"""The receive strategies with --proxy-protocol-from, on loopback without privileges: a trusted sender's
datagrams leave without their header (one by one, and in sendmmsg runs whose iovecs start after it), and
the slots they used carry an untrusted sender's whole datagrams again in the next batch.

Flows are opened by hand with plain sockets (the machine never looks at a flow's socket), so nothing here
needs IP_TRANSPARENT; the backend is a loopback socket.
"""

import ipaddress
import socket
from collections.abc import Iterator

import pytest
from forwarder_helpers import drain

from forwarder.core.actions import READ_HEADER, OpenFlow
from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.destination import Destination
from forwarder.core.flows import Flow
from forwarder.core.machine import ForwardingMachine
from forwarder.core.proxy_protocol import TrustedSources, build
from forwarder.io.engine import Engine
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.service.notify import Notifier


@pytest.fixture(params=["single", "batch"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def udp(address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    return sock


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """The listener, the backend, a trusted load balancer (127.0.0.2) and an untrusted client."""
    made = [udp(), udp(), udp("127.0.0.2"), udp()]
    made[0].setblocking(False)
    made[1].settimeout(5)
    yield made[0], made[1], made[2], made[3]
    for sock in made:
        sock.close()


def received(backend: socket.socket, count: int) -> list[bytes]:
    return [backend.recv(65535) for _ in range(count)]


def test_a_trusted_senders_datagrams_leave_without_their_header_and_the_slots_are_whole_again(
    sockets: tuple[socket.socket, socket.socket, socket.socket, socket.socket], mode: str
) -> None:
    listener, backend, lb, stranger = sockets
    target = backend.getsockname()
    route = Route(ListeningSocket(listener, "test"), Destination(socket.AF_INET, *target))
    machine = ForwardingMachine(trusted=TrustedSources([ipaddress.ip_network("127.0.0.2/32")]))
    engine = Engine([route], Notifier({}), machine, receive_strategy=mode, batch=8, buffer_size=2048)
    header = build(("203.0.113.7", 4242), ("127.0.0.1", listener.getsockname()[1]))
    # Open both flows the way the engine would, with plain sockets instead of transparent ones.
    lb_raw = sockaddr_bytes(socket.AF_INET, lb.getsockname())
    assert machine.receive(route.path, lb_raw, 40, 0, 1.0) is READ_HEADER
    first, _ = machine.receive_proxied(route.path, lb_raw, memoryview(header + b"x"), 0, 1.0)
    assert isinstance(first, OpenFlow)
    machine.flow_opened(first.flow, udp())
    # A loopback client is never presented: its flow is made by hand (the keying is what matters here).
    stranger_raw = sockaddr_bytes(socket.AF_INET, stranger.getsockname())
    machine.flow_opened(Flow((route.path.target, stranger_raw), route.path, ("127.0.0.1", 1)), udp())

    for index in range(5):  # one run of five: a sendmmsg on the batch path
        lb.sendto(header + b"proxied-%d" % index, listener.getsockname())
    drain(engine, route)
    assert received(backend, 5) == [b"proxied-%d" % index for index in range(5)]

    for index in range(5):  # the same slots, now an untrusted sender's: nothing cut off
        stranger.sendto(header + b"as-is-%d" % index, listener.getsockname())
    drain(engine, route)
    assert received(backend, 5) == [header + b"as-is-%d" % index for index in range(5)]

    lb.sendto(header + b"lone", listener.getsockname())
    stranger.sendto(b"between", listener.getsockname())
    lb.sendto(header[:20], listener.getsockname())  # truncated: dropped, never forwarded
    drain(engine, route)
    assert received(backend, 2) == [b"lone", b"between"]
    assert machine.counters.dropped == {"proxy-header-truncated": 1}
    assert machine.counters.forwarded == 13
    engine.close()


@pytest.mark.parametrize("wildcard", [False, True], ids=["bound", "wildcard"])
def test_the_sending_mode_prefixes_a_header_from_the_hosts_address_and_relays_the_reply(
    mode: str, wildcard: bool
) -> None:
    listener = udp("0.0.0.0" if wildcard else "127.0.0.1")
    listener.setblocking(False)
    backend, client = udp(), udp()
    backend.settimeout(5)
    client.settimeout(5)
    port = listener.getsockname()[1]
    engine: Engine | None = None
    try:
        route = Route(
            ListeningSocket(listener, "test"),
            Destination(socket.AF_INET, *backend.getsockname()),
            pktinfo=wildcard,
        )
        machine = ForwardingMachine(send_header=True)
        engine = Engine([route], Notifier({}), machine, receive_strategy=mode, batch=8)
        for payload in (b"one", b"two", b"three"):  # a new flow, then a run of two
            client.sendto(payload, ("127.0.0.1", port))
        drain(engine, route)

        header = build(client.getsockname(), ("127.0.0.1", port))
        arrived = [backend.recvfrom(65535) for _ in range(3)]
        assert [data for data, _ in arrived] == [header + b"one", header + b"two", header + b"three"]
        sender = arrived[0][1]
        assert sender[0] == "127.0.0.1"
        assert sender != client.getsockname()  # the host's own address and port, not the client's

        backend.sendto(b"reply", sender)
        (flow,) = machine.flows.values()
        engine.flow_ready(flow, 2.0)
        assert client.recvfrom(65535) == (b"reply", ("127.0.0.1", port))
        assert (machine.counters.forwarded, machine.counters.relayed) == (3, 1)
    finally:
        if engine is not None:
            engine.close()
        for sock in (listener, backend, client):
            sock.close()


def test_on_a_wildcard_listener_each_datagram_of_a_flow_names_its_own_address_in_runs_too(mode: str) -> None:
    # One client asks two of the host's addresses, interleaved and in runs: a run must not carry a header
    # naming the address another of its datagrams was sent to.
    listener = udp("0.0.0.0")
    listener.setblocking(False)
    backend, client = udp(), udp()
    backend.settimeout(5)
    port = listener.getsockname()[1]
    engine: Engine | None = None
    try:
        route = Route(
            ListeningSocket(listener, "test"),
            Destination(socket.AF_INET, *backend.getsockname()),
            pktinfo=True,
        )
        engine = Engine(
            [route], Notifier({}), ForwardingMachine(send_header=True), receive_strategy=mode, batch=8
        )
        asked = ["127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.1", "127.0.0.1", "127.0.0.2"]
        for index, address in enumerate(asked):
            client.sendto(b"%d" % index, (address, port))
        drain(engine, route)

        arrived = [backend.recv(65535) for _ in asked]
        assert arrived == [
            build(client.getsockname(), (address, port)) + b"%d" % index
            for index, address in enumerate(asked)
        ]
    finally:
        if engine is not None:
            engine.close()
        for sock in (listener, backend, client):
            sock.close()
