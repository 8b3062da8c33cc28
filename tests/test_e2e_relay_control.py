"""Relay mode on a wildcard socket that systemd handed over with SO_TIMESTAMP / SO_TIMESTAMPNS set (what a
.socket unit's Timestamping= does), under systemd-socket-activate: every datagram carries a timestamp
control message before its pktinfo, and the forwarder still finds the address the client sent to.

Topology as in test_e2e_relay: the host has 198.51.100.1, .2 and 2001:db8:1::1 on the client link.
"""

import socket

import pytest
from test_e2e_relay import RELAY, client_socket, relay_deployment, start_answering

from forwarder.core.proxy_protocol import build
from netlab import Lab, start_forwarder
from netlab.service.activation import HeldSockets
from netlab.service.relay import install_relay_route

pytestmark = pytest.mark.privileged

SO_TIMESTAMP = 29  # SO_TIMESTAMP_OLD (a struct timeval); not exported by the socket module
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD (a struct timespec)


@pytest.fixture
def relay_lab(lab: Lab) -> Lab:
    lab.build(relay_deployment())
    lab["host"].sysctl("net.ipv4.ip_forward", "0")
    for backend in ("192.0.2.2", "2001:db8:2::2"):
        start_answering(lab["backend"], backend, 5353)
        install_relay_route(lab["host"], backend, 5353)
    return lab


def timestamped(lab: Lab, listen: str, stamp: int = SO_TIMESTAMP) -> HeldSockets:
    """A wildcard listening socket (`[::]` dual-stack) with `stamp` set, as systemd would hand it over."""
    host, _, port = listen.rpartition(":")
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    sock = lab["host"].open_socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, stamp, 1)
    sock.bind((host.strip("[]"), int(port)))
    return HeldSockets(lab["host"], [listen], [sock])


def start(sock: socket.socket, to: tuple[str, int]) -> None:
    """The datagram that activates the service (it waited before the forwarder asked for pktinfo)."""
    sock.sendto(b"start", to)
    sock.recvfrom(65535)


@pytest.mark.parametrize("receive", ["batch", "single"])
@pytest.mark.parametrize("stamp", [SO_TIMESTAMP, SO_TIMESTAMPNS], ids=["SO_TIMESTAMP", "SO_TIMESTAMPNS"])
def test_a_timestamping_ipv4_wildcard_relay_answers_from_the_address_asked(
    relay_lab: Lab, receive: str, stamp: int
) -> None:
    held = timestamped(relay_lab, "0.0.0.0:53", stamp)
    start_forwarder(
        relay_lab["host"], [], ["192.0.2.2:5353"], args=[*RELAY, "--receive", receive], sockets=held
    )
    sock = client_socket(relay_lab, "198.51.100.10")
    start(sock, ("198.51.100.1", 53))

    for asked in ("198.51.100.2", "198.51.100.1", "198.51.100.2"):
        sock.sendto(asked.encode(), (asked, 53))
        answer, source = sock.recvfrom(65535)
        assert (answer.rpartition(b";")[2], source) == (asked.encode(), (asked, 53))


def test_a_timestamping_dual_stack_relay_relays_ipv6_replies(relay_lab: Lab) -> None:
    held = timestamped(relay_lab, "[::]:53")
    start_forwarder(relay_lab["host"], [], ["[2001:db8:2::2]:5353"], args=RELAY, sockets=held)
    sock = client_socket(relay_lab, "2001:db8:1::10")
    start(sock, ("2001:db8:1::1", 53))

    sock.sendto(b"ask", ("2001:db8:1::1", 53))

    answer, source = sock.recvfrom(65535)
    assert (answer, source[:2]) == (
        f"seen=2001:db8:1::10:{sock.getsockname()[1]};ask".encode(),
        ("2001:db8:1::1", 53),
    )


def test_a_timestamping_dual_stack_proxy_sender_forwards_an_ipv4_client_naming_the_address_asked(
    relay_lab: Lab,
) -> None:
    held = timestamped(relay_lab, "[::]:53")
    start_forwarder(relay_lab["host"], [], ["192.0.2.2:5353"], args=["--send-proxy-protocol"], sockets=held)
    start(client_socket(relay_lab, "198.51.100.10"), ("198.51.100.1", 53))
    sock = client_socket(relay_lab, "198.51.100.10")  # a flow of its own: its header is built now

    sock.sendto(b"ask", ("198.51.100.2", 53))

    answer, source = sock.recvfrom(65535)
    header = build(("198.51.100.10", sock.getsockname()[1]), ("198.51.100.2", 53))
    assert (answer.partition(b";")[2], source) == (header + b"ask", ("198.51.100.2", 53))
