"""Relay mode's replies in batches (forwarder.replies), on loopback without privileges: the replies of
one pass over several flow sockets leave with one sendmmsg per listening socket, each to its own client,
from the address that client sent to; the control message that chooses the source is what the kernel
expects.

Relaying needs no transparent flow sockets when the machine sends a PROXY header
(`Settings(send_proxy_protocol=True)`): the engine's flow sockets are then plain, so this runs as anyone.
"""

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from forwarder_helpers import drain

from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.destination import Destination
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import Settings
from forwarder.io.engine import Engine
from forwarder.io.linux import IP_PKTINFO
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.io.replies import source_control
from forwarder.service.notify import Notifier


def udp(family: socket.AddressFamily, address: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.settimeout(5)
    return sock


@pytest.fixture
def made() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def test_the_source_control_message_is_the_one_the_socket_module_would_build() -> None:
    local = socket.inet_aton("127.0.0.2")
    header = struct.Struct("@Nii")
    raw = source_control(socket.AF_INET, local)
    assert len(raw) == socket.CMSG_SPACE(12)
    assert header.unpack_from(raw) == (socket.CMSG_LEN(12), socket.IPPROTO_IP, IP_PKTINFO)
    assert raw[header.size : header.size + 12] == bytes(4) + local + bytes(4)  # ipi_spec_dst is the source
    six = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    raw6 = source_control(socket.AF_INET6, six)
    assert len(raw6) == socket.CMSG_SPACE(20)
    assert header.unpack_from(raw6) == (socket.CMSG_LEN(20), socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)
    assert raw6[header.size : header.size + 20] == six + bytes(4)


def test_the_replies_of_one_pass_leave_each_to_its_client_from_the_address_it_asked_one_sendmmsg_per_listener(
    made: list[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    wildcard = udp(socket.AF_INET, "0.0.0.0")
    plain = udp(socket.AF_INET, "127.0.0.1")
    backend = udp(socket.AF_INET, "127.0.0.1")
    made += [wildcard, plain, backend]
    for listener in (wildcard, plain):
        listener.setblocking(False)
    port, other_port = wildcard.getsockname()[1], plain.getsockname()[1]
    destination = Destination(socket.AF_INET, *backend.getsockname())
    routes = [
        Route(ListeningSocket(wildcard, "v4"), destination, pktinfo=True),
        Route(ListeningSocket(plain, "plain"), destination),
    ]
    machine = ForwardingMachine(Settings(send_proxy_protocol=True))
    engine = Engine(routes, Notifier({}), machine, batch=8)
    try:
        assert engine._replies is not None
        sends: list[tuple[int, int]] = []
        real_send = engine._replies.send

        def counting_send(fd: int, first: int, count: int) -> tuple[int, int]:
            sends.append((fd, count))
            return real_send(fd, first, count)

        monkeypatch.setattr(engine._replies, "send", counting_send)
        asked: dict[socket.socket, tuple[str, int]] = {}  # client socket -> the address it sent to
        for address in ("127.0.0.2", "127.0.0.3", "127.0.0.1"):
            client = udp(socket.AF_INET, "127.0.0.1")
            made.append(client)
            asked[client] = (address, port)
        other = udp(socket.AF_INET, "127.0.0.1")
        made.append(other)
        asked[other] = ("127.0.0.1", other_port)
        for client, asked_address in asked.items():
            client.sendto(b"ask %d" % client.getsockname()[1], asked_address)
        drain(engine, routes[0])
        drain(engine, routes[1])
        flows = list(machine.flows.values())
        assert len(flows) == 4
        for _ in flows:  # each flow's own (plain) socket sent the PROXY-prefixed ask: answer it there, twice
            data, sender = backend.recvfrom(100)
            client_port = data.rpartition(b"ask ")[2]
            backend.sendto(b"to " + client_port, sender)
            backend.sendto(b"second to " + client_port, sender)
        now = time.monotonic()
        deadline = now + 5
        while machine.counters.relayed < 8 and time.monotonic() < deadline:
            for flow in flows:
                engine.gather(flow, now, errors=False)
        engine.flush_replies()

        assert machine.counters.relayed == 8
        assert sorted(count for _, count in sends) == [2, 6]  # one sendmmsg per listener for the whole pass
        for client, asked_address in asked.items():
            own = b"%d" % client.getsockname()[1]
            assert client.recvfrom(100) == (b"to " + own, asked_address)
            assert client.recvfrom(100) == (b"second to " + own, asked_address)
    finally:
        engine.close()


def test_a_reply_that_cannot_be_sent_is_counted_and_the_replies_after_it_in_the_batch_still_leave(
    made: list[socket.socket],
) -> None:
    listener = udp(socket.AF_INET, "127.0.0.1")
    backend = udp(socket.AF_INET, "127.0.0.1")
    made += [listener, backend]
    listener.setblocking(False)
    route = Route(ListeningSocket(listener, "test"), Destination(socket.AF_INET, *backend.getsockname()))
    machine = ForwardingMachine(Settings(send_proxy_protocol=True))
    engine = Engine([route], Notifier({}), machine, batch=8)
    try:
        clients = [udp(socket.AF_INET, "127.0.0.1") for _ in range(3)]
        made.extend(clients)
        for client in clients:
            client.sendto(b"ask", listener.getsockname())
        drain(engine, route)
        flows = list(machine.flows.values())
        flows[1].peer = ("127.0.0.1", 0)  # a destination no datagram can be sent to: EINVAL
        flows[1].raw_peer = sockaddr_bytes(socket.AF_INET, flows[1].peer)  # (as sendmmsg names it)
        for _ in flows:
            backend.sendto(b"reply", backend.recvfrom(100)[1])
        now = time.monotonic()
        for flow in flows:
            engine.gather(flow, now, errors=False)
        engine.flush_replies()

        assert clients[0].recvfrom(100) == (b"reply", listener.getsockname())
        assert clients[2].recvfrom(100) == (b"reply", listener.getsockname())
        assert machine.counters.relayed == 2
        assert dict(machine.counters.reply_dropped) == {"reply-send-error:EINVAL": 1}
    finally:
        engine.close()


def test_the_truncation_flag_every_datagram_and_reply_is_checked_against_is_a_plain_int() -> None:
    # `int & IntFlag` runs enum.Flag's Python code (about 1.4 us); a plain int costs nothing measurable.
    from forwarder.core import machine, reply_rules

    assert type(machine.MSG_TRUNC) is int
    assert type(reply_rules.MSG_TRUNC) is int
    assert machine.MSG_TRUNC == reply_rules.MSG_TRUNC == socket.MSG_TRUNC


def test_the_control_truncation_flag_the_control_walks_check_is_a_plain_int() -> None:
    # The same for the control-message walks: pktinfo per datagram of a wildcard listener, the original
    # destination per reply on the --reply-tproxy socket.
    from forwarder.io import control

    assert type(control.MSG_CTRUNC) is int
    assert control.MSG_CTRUNC == socket.MSG_CTRUNC
