"""One flow per 4-tuple (client's presented address and port, backend's), whatever listener or PROXY header
brought the client, and a reply path that follows the client's latest datagram. Without sockets.
"""

import ipaddress
import socket
from typing import cast

from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.actions import OpenFlow
from forwarder.core.addresses import decode_sockaddr, sockaddr_bytes
from forwarder.core.destination import Destination
from forwarder.core.flows import Flow, Path, canonical_sockaddr
from forwarder.core.machine import ForwardingMachine
from forwarder.core.proxy_protocol import TrustedSources, build

BACKEND = Destination(socket.AF_INET, "192.0.2.2", 5353)
FIRST = Path("198.51.100.1:27000", BACKEND, ("198.51.100.1", 27000))
SECOND = Path("198.51.100.3:27000", BACKEND, ("198.51.100.3", 27000))
DUAL = Path("[::]:27000", BACKEND, ("::", 27000))
OTHER_BACKEND = Path("198.51.100.1:27001", Destination(socket.AF_INET, "192.0.2.2", 5354))
CLIENT = sockaddr_bytes(socket.AF_INET, ("203.0.113.7", 4242))
MAPPED = sockaddr_bytes(socket.AF_INET6, ("::ffff:203.0.113.7", 4242, 0, 0))
LB = sockaddr_bytes(socket.AF_INET, ("198.51.100.20", 40000))


def opened(machine: ForwardingMachine, path: Path, client: bytes, local: bytes | None = None) -> Flow:
    action = machine.receive(path, client, 10, 0, 1.0, local=local)
    assert isinstance(action, OpenFlow), action
    machine.flow_opened(action.flow, cast(socket.socket, object()))
    return action.flow


def test_a_client_reaching_one_backend_through_two_listeners_has_one_flow_answered_from_the_latest() -> None:
    machine = ForwardingMachine(relay=True)
    flow = opened(machine, FIRST, CLIENT)

    again = machine.receive(SECOND, CLIENT, 10, 0, 2.0)

    assert again is flow
    assert len(machine.flows) == 1
    assert flow.path is SECOND  # the reply leaves from the listening socket the client used last
    assert machine.receive(FIRST, CLIENT, 10, 0, 3.0) is flow
    assert flow.path is FIRST


def test_an_ipv4_listener_and_a_dual_stack_listener_share_one_flow_of_one_client() -> None:
    machine = ForwardingMachine(relay=True)
    flow = opened(machine, FIRST, CLIENT, local=bytes([198, 51, 100, 1]))

    mapped = bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 1])
    again = machine.receive(DUAL, MAPPED, 10, 0, 2.0, local=mapped)

    assert again is flow
    assert len(machine.flows) == 1
    assert (flow.path, flow.peer, flow.local_address) == (DUAL, ("::ffff:203.0.113.7", 4242, 0, 0), mapped)
    assert machine.receive(FIRST, CLIENT, 10, 0, 3.0) is flow
    # Back on the IPv4 socket: the IPv6 socket's local address is never used there.
    assert (flow.path, flow.peer, flow.local_address) == (FIRST, ("203.0.113.7", 4242), None)


def test_a_flow_to_another_backend_is_another_flow() -> None:
    machine = ForwardingMachine(relay=True)
    first = opened(machine, FIRST, CLIENT)

    assert opened(machine, OTHER_BACKEND, CLIENT) is not first
    assert len(machine.flows) == 2


def test_a_headers_client_and_the_same_address_and_port_without_a_header_share_one_flow() -> None:
    machine = ForwardingMachine(
        relay=True, trusted=TrustedSources([ipaddress.ip_network("198.51.100.16/28")])
    )
    datagram = build(("203.0.113.7", 4242), ("198.51.100.1", 27000)) + b"payload"
    machine.receive(FIRST, LB, len(datagram), 0, 1.0)
    action, _ = machine.receive_proxied(FIRST, LB, memoryview(datagram), 0, 1.0)
    assert isinstance(action, OpenFlow)
    flow = action.flow
    machine.flow_opened(flow, cast(socket.socket, object()))

    direct = machine.receive(FIRST, CLIENT, 10, 0, 2.0)
    assert direct is flow
    assert flow.raw_peer == CLIENT  # the client itself sent the latest datagram: it gets the reply

    machine.receive(FIRST, LB, len(datagram), 0, 3.0)
    assert machine.receive_proxied(FIRST, LB, memoryview(datagram), 0, 3.0)[0] is flow
    assert flow.raw_peer == LB  # and now the load balancer
    assert len(machine.flows) == 1


def test_a_flow_that_left_the_table_takes_its_senders_with_it() -> None:
    machine = ForwardingMachine(relay=True, max_flows=1)
    flow = opened(machine, FIRST, CLIENT)
    machine.receive(DUAL, MAPPED, 10, 0, 2.0)

    newcomer = machine.receive(FIRST, LB, 10, 0, 3.0)
    assert isinstance(newcomer, OpenFlow)
    closed = machine.flow_opened(newcomer.flow, cast(socket.socket, object()))

    assert closed is not None
    assert closed.flows == (flow,)
    assert isinstance(machine.receive(DUAL, MAPPED, 10, 0, 4.0), OpenFlow)  # no stale way back to it


def test_a_reply_from_the_other_backend_finds_the_flow_of_a_dual_stack_client() -> None:
    machine = ForwardingMachine(relay=True)
    first = opened(machine, DUAL, MAPPED)
    other = opened(machine, OTHER_BACKEND, CLIENT)

    assert machine.reply_received(first, ("192.0.2.2", 5354), 10, 0, 2.0) is other


@given(
    address=st.ip_addresses(),
    port=st.integers(1, 65535),
    flowinfo=st.integers(0, 2**20 - 1),
    scope=st.integers(0, 2**32 - 1),
)
def test_the_canonical_sockaddr_names_the_same_address_and_port(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, flowinfo: int, scope: int
) -> None:
    if address.version == 4:
        raw = sockaddr_bytes(socket.AF_INET, (str(address), port))
        mapped = sockaddr_bytes(socket.AF_INET6, (f"::ffff:{address}", port, flowinfo, scope))
        assert canonical_sockaddr(raw) == raw
        assert canonical_sockaddr(mapped) == raw
        return
    raw = sockaddr_bytes(socket.AF_INET6, (str(address), port, flowinfo, scope))
    canonical = canonical_sockaddr(raw)
    decoded = decode_sockaddr(canonical)
    expected = address.ipv4_mapped if address.ipv4_mapped is not None else address
    assert (ipaddress.ip_address(decoded[0]), decoded[1]) == (expected, port)
    assert canonical_sockaddr(canonical) == canonical
