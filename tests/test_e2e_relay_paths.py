"""Relay mode's reply path end to end, under systemd-socket-activate: one flow (one flow socket) per
4-tuple, whatever listener or PROXY header brought the client; its replies leave from the listening socket
and address the client used last, to the client or the load balancer that sent the latest datagram. And
`--listen` on an address and port another program holds exits 71, while a client whose source port is the
listener's own still gets its flow socket.

Topology as in test_e2e_relay (the host has 198.51.100.1 and .2 on the client link; the client also has
198.51.100.11, the address a load balancer at .10 names in its headers).
"""

import socket
import sys
import threading

import pytest
from e2e_helpers import status_has
from test_e2e_relay import RELAY, client_socket, relay_deployment, start_answering

from forwarder.core.proxy_protocol import build
from netlab import Lab, start_forwarder
from netlab.lab.process import python_env
from netlab.lab.wait import wait_until
from netlab.service.procnet import udp_ports_bound
from netlab.service.relay import install_relay_route

pytestmark = pytest.mark.privileged

BACKEND = "192.0.2.2:5353"


@pytest.fixture
def relay_lab(lab: Lab) -> Lab:
    topology = relay_deployment()
    topology.links[0].a.addresses.append("198.51.100.11/24")
    lab.build(topology)
    lab["host"].sysctl("net.ipv4.ip_forward", "0")
    start_answering(lab["backend"], "192.0.2.2", 5353)
    install_relay_route(lab["host"], "192.0.2.2", 5353)
    return lab


@pytest.mark.parametrize("receive", ["batch", "single"])
def test_a_client_asking_two_listeners_of_one_backend_is_answered_from_each_address_it_asks(
    relay_lab: Lab, receive: str
) -> None:
    forwarder = start_forwarder(
        relay_lab["host"],
        ["198.51.100.1:53", "198.51.100.2:53"],
        [BACKEND, BACKEND],
        args=[*RELAY, "--receive", receive],
    )
    sock = client_socket(relay_lab, "198.51.100.10")

    for asked in ("198.51.100.1", "198.51.100.2", "198.51.100.1", "198.51.100.2"):
        sock.sendto(asked.encode(), (asked, 53))
        answer, source = sock.recvfrom(100)
        assert (answer.rpartition(b";")[2], source) == (asked.encode(), (asked, 53))
    forwarder.wait_status(status_has("4 replies relayed, 0 replies dropped"))
    forwarder.wait_status(status_has("1 flows"))


def test_an_ipv4_and_a_dual_stack_listener_share_one_flow_and_answer_from_the_one_asked(
    relay_lab: Lab,
) -> None:
    forwarder = start_forwarder(
        relay_lab["host"], ["198.51.100.1:53", "[::]:54"], [BACKEND, BACKEND], args=RELAY
    )
    sock = client_socket(relay_lab, "198.51.100.10")

    for port in (53, 54, 53, 54):
        sock.sendto(str(port).encode(), ("198.51.100.1", port))
        answer, source = sock.recvfrom(100)
        assert (answer.rpartition(b";")[2], source) == (str(port).encode(), ("198.51.100.1", port))
    forwarder.wait_status(status_has("4 replies relayed, 0 replies dropped"))
    forwarder.wait_status(status_has("1 flows"))


def _answer_in_pairs(sock: socket.socket) -> None:
    """A backend that answers only once two datagrams have arrived, then both."""
    while True:
        try:
            first = sock.recvfrom(100)
            second = sock.recvfrom(100)
        except OSError:
            return
        for data, peer in (first, second):
            sock.sendto(data, peer)


def test_replies_to_two_listeners_asked_at_once_leave_from_the_address_the_client_used_last(lab: Lab) -> None:
    # The backend sees one client (one 4-tuple) either way: its replies cannot say which listener they
    # answer, so both leave from the one the client used last.
    lab.build(relay_deployment())
    threading.Thread(
        target=_answer_in_pairs, args=(lab["backend"].udp_socket("192.0.2.2", 5353),), daemon=True
    ).start()
    install_relay_route(lab["host"], "192.0.2.2", 5353)
    start_forwarder(lab["host"], ["198.51.100.1:53", "198.51.100.2:53"], [BACKEND, BACKEND], args=RELAY)
    sock = client_socket(lab, "198.51.100.10")

    sock.sendto(b"one", ("198.51.100.1", 53))
    sock.sendto(b"two", ("198.51.100.2", 53))

    assert {sock.recvfrom(100) for _ in range(2)} == {
        (b"one", ("198.51.100.2", 53)),
        (b"two", ("198.51.100.2", 53)),
    }


def test_a_headers_client_and_the_same_address_without_a_header_share_one_flow_socket(relay_lab: Lab) -> None:
    forwarder = start_forwarder(
        relay_lab["host"],
        ["198.51.100.1:53"],
        [BACKEND],
        args=[*RELAY, "--proxy-protocol-from", "198.51.100.10/32"],
    )
    balancer = client_socket(relay_lab, "198.51.100.10")
    client = client_socket(relay_lab, "198.51.100.11")
    named = ("198.51.100.11", client.getsockname()[1])
    header = build(named, ("198.51.100.1", 53))
    seen = f"seen=198.51.100.11:{named[1]};".encode()

    balancer.sendto(header + b"via lb", ("198.51.100.1", 53))
    assert balancer.recvfrom(100) == (seen + b"via lb", ("198.51.100.1", 53))
    client.sendto(b"direct", ("198.51.100.1", 53))
    assert client.recvfrom(100) == (seen + b"direct", ("198.51.100.1", 53))
    balancer.sendto(header + b"via lb again", ("198.51.100.1", 53))

    # Two flow sockets on one 4-tuple would hand this reply to the newer (the direct one's): around the LB.
    assert balancer.recvfrom(100) == (seen + b"via lb again", ("198.51.100.1", 53))
    forwarder.wait_status(status_has("since start 3 forwarded, 0 dropped, 3 replies relayed"))
    forwarder.wait_status(status_has("1 flows"))


@pytest.mark.parametrize("mode", ["relay", "send-proxy-protocol"])
def test_one_datagram_spoofed_from_the_backends_address_and_port_is_dropped_not_looped(
    relay_lab: Lab, mode: str
) -> None:
    # Relayed, that client's reply would go to the backend from the listener, the backend's answer would
    # come back as the client's next datagram, and so on: thousands a second from one spoofed datagram.
    args = [*RELAY, "--send-proxy-protocol"] if mode == "send-proxy-protocol" else RELAY
    forwarder = start_forwarder(relay_lab["host"], ["198.51.100.1:53"], [BACKEND], args=args)
    relay_lab["client"].send_udp(src="192.0.2.2", dst="198.51.100.1", sport=5353, dport=53, payload=b"loop")

    forwarder.wait_status(status_has("backend-source 1"))
    client = client_socket(relay_lab, "198.51.100.10")
    client.sendto(b"after", ("198.51.100.1", 53))
    assert client.recvfrom(100)[0].endswith(b"after")
    forwarder.wait_status(status_has("since start 1 forwarded, 1 dropped, 1 replies relayed"))


def test_listen_on_an_address_another_forwarder_holds_exits_71_naming_it(relay_lab: Lab) -> None:
    first = relay_lab["host"].run(
        [sys.executable, "-m", "forwarder", "--listen", "198.51.100.1:27000", "--reply", "relay", BACKEND],
        label="first",
        env=python_env(),
    )
    wait_until(lambda: 27000 in udp_ports_bound(first.pid), "the first forwarder to listen", 10)

    second = relay_lab["host"].run(
        [sys.executable, "-m", "forwarder", "--listen", "198.51.100.1:27000", "--reply", "relay", BACKEND],
        label="second",
        env=python_env(),
    )

    assert second.wait(10) == 71, second.output()
    assert "cannot listen on '198.51.100.1:27000': Address already in use" in second.output()
    assert first.returncode is None


def test_listen_on_a_wildcard_port_a_program_shares_with_so_reuseaddr_exits_71(relay_lab: Lab) -> None:
    holder = relay_lab["host"].open_socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # it consents; the forwarder does not
    holder.bind(("0.0.0.0", 27000))

    process = relay_lab["host"].run(
        [sys.executable, "-m", "forwarder", "--listen", "0.0.0.0:27000", "--reply", "relay", BACKEND],
        label="forwarder",
        env=python_env(),
    )

    assert process.wait(10) == 71, process.output()
    assert "'0.0.0.0:27000'" in process.output()


def test_with_listen_no_other_program_can_bind_next_to_the_forwarder_even_after_a_port_53_client(
    relay_lab: Lab,
) -> None:
    process = relay_lab["host"].run(
        [sys.executable, "-m", "forwarder", "--listen", "0.0.0.0:53", "--reply", "relay", BACKEND],
        label="forwarder",
        env=python_env(),
    )
    wait_until(lambda: 53 in udp_ports_bound(process.pid), "the forwarder to listen", 10)
    sock = client_socket(relay_lab, "198.51.100.10", 53)
    sock.sendto(b"from 53", ("198.51.100.1", 53))
    assert sock.recvfrom(100) == (b"seen=198.51.100.10:53;from 53", ("198.51.100.1", 53)), process.output()

    intruder = relay_lab["host"].open_socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with pytest.raises(OSError, match="Address already in use"):
        intruder.bind(("198.51.100.1", 53))
