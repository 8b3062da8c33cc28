"""The forwarding machine with --proxy-protocol-from, without sockets or privileges: only trusted senders'
headers are read; a header's client is presented under every rule a client obeys; each header problem is a
drop of its own; LOCAL presents the sender; flows are keyed by the client a header names.
"""

import ipaddress
import socket
from typing import cast

import pytest

from forwarder.core import proxy_protocol
from forwarder.core.actions import READ_HEADER, CloseFlows, Drop, OpenFlow, SendOnce
from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.destination import Destination
from forwarder.core.flows import Flow, Path
from forwarder.core.machine import ForwardingMachine
from forwarder.core.proxy_protocol import (
    HEADER_CACHE_BYTES,
    SIGNATURE,
    TLV_CRC32C,
    TLV_NOOP,
    HeaderProblem,
    TrustedSources,
    build,
    build_local,
    crc32c,
)

V4 = Path("dns", Destination(socket.AF_INET, "192.0.2.2", 53))
V6 = Path("dns6", Destination(socket.AF_INET6, "2001:db8:2::2", 53))
LB = sockaddr_bytes(socket.AF_INET, ("198.51.100.20", 40000))
LB2 = sockaddr_bytes(socket.AF_INET, ("198.51.100.21", 40001))
LB6 = sockaddr_bytes(socket.AF_INET6, ("2001:db8:51::20", 40000, 0, 0))
STRANGER = sockaddr_bytes(socket.AF_INET, ("198.51.100.99", 5000))


def machine(**options: object) -> ForwardingMachine:
    trusted = TrustedSources(
        [ipaddress.ip_network("198.51.100.16/28"), ipaddress.ip_network("2001:db8:51::/64")]
    )
    return ForwardingMachine(trusted=trusted, **options)  # type: ignore[arg-type]


def via(lb: bytes, client: tuple[str, int], to: tuple[str, int] = ("198.51.100.1", 53)) -> bytes:
    return build(client, to) + b"payload"


def proxied(
    m: ForwardingMachine, path: Path, lb: bytes, datagram: bytes, now: float = 1.0
) -> tuple[object, int]:
    """Receive `datagram` from `lb` as a strategy would: metadata first, then the bytes when asked."""
    assert m.receive(path, lb, len(datagram), 0, now) is READ_HEADER
    return m.receive_proxied(path, lb, memoryview(datagram), 0, now)


def opened(m: ForwardingMachine, path: Path, lb: bytes, datagram: bytes, now: float = 1.0) -> Flow:
    action, _ = proxied(m, path, lb, datagram, now)
    assert isinstance(action, OpenFlow), action
    m.flow_opened(action.flow, cast(socket.socket, object()))
    return action.flow


def test_a_trusted_senders_header_is_removed_and_its_client_presented() -> None:
    m = machine()
    datagram = via(LB, ("203.0.113.7", 4242))
    action, skip = proxied(m, V4, LB, datagram)
    assert isinstance(action, OpenFlow)
    assert action.flow.presented == ("203.0.113.7", 4242)
    assert action.flow.raw_peer == LB  # replies go back to the load balancer
    assert datagram[skip:] == b"payload"
    assert m.counters.forwarded == 1


def test_an_untrusted_sender_is_forwarded_as_itself_header_and_all() -> None:
    m = machine()
    action = m.receive(V4, STRANGER, len(via(STRANGER, ("203.0.113.7", 4242))), 0, 1.0)
    assert isinstance(action, OpenFlow)
    assert action.flow.presented == ("198.51.100.99", 5000)


def test_a_machine_without_trusted_networks_never_asks_for_a_header() -> None:
    action = ForwardingMachine().receive(V4, LB, 40, 0, 1.0)
    assert isinstance(action, OpenFlow)
    assert action.flow.presented == ("198.51.100.20", 40000)


def test_a_v4_mapped_sender_of_a_dual_stack_listener_is_trusted_by_its_ipv4_network() -> None:
    mapped = sockaddr_bytes(socket.AF_INET6, ("::ffff:198.51.100.20", 40000, 0, 0))
    assert machine().receive(V4, mapped, 40, 0, 1.0) is READ_HEADER


GOOD = build(("203.0.113.7", 4242), ("198.51.100.1", 53))


@pytest.mark.parametrize(
    ("network", "sender", "trusted"),
    [
        ("::ffff:198.51.100.20/128", ("198.51.100.20", 40000), True),
        ("::ffff:198.51.100.20/128", ("::ffff:198.51.100.20", 40000, 0, 0), True),
        ("::ffff:198.51.100.0/120", ("198.51.100.99", 40000), True),
        ("::ffff:198.51.100.0/120", ("198.51.101.1", 40000), False),
        ("::ffff:0:0/96", ("203.0.113.1", 40000), True),
    ],
)
def test_a_v4_mapped_trusted_network_matches_the_ipv4_senders_it_maps(
    network: str, sender: tuple[object, ...], trusted: bool
) -> None:
    sources = TrustedSources([ipaddress.ip_network(network)])
    family = socket.AF_INET6 if ":" in str(sender[0]) else socket.AF_INET
    assert sources(sockaddr_bytes(family, sender)) is trusted  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("datagram", "problem"),
    [
        (b"no header at all", HeaderProblem.MISSING),
        (GOOD[:20], HeaderProblem.TRUNCATED),
        (GOOD[:12] + b"\x11" + GOOD[13:], HeaderProblem.VERSION),
        (GOOD[:12] + b"\x22" + GOOD[13:], HeaderProblem.COMMAND),
        (GOOD[:13] + b"\x02" + GOOD[14:], HeaderProblem.FAMILY),
        (GOOD[:13] + b"\x22" + GOOD[14:], HeaderProblem.LENGTH),
        (GOOD[:13] + b"\x11" + GOOD[14:], HeaderProblem.TRANSPORT),
        (GOOD[:15] + b"\x0e" + GOOD[16:] + b"\x04\x00", HeaderProblem.TLV),
        (GOOD[:15] + b"\x13" + GOOD[16:] + b"\x03\x00\x04" + bytes(4), HeaderProblem.CHECKSUM),
    ],
    ids=lambda value: value.value if isinstance(value, HeaderProblem) else None,
)
def test_every_header_problem_of_a_trusted_sender_is_a_drop_counted_by_its_reason(
    datagram: bytes, problem: HeaderProblem
) -> None:
    m = machine()
    action, skip = proxied(m, V4, LB, datagram)
    assert action == Drop(problem.value, V4, LB)
    assert skip == 0
    assert (m.counters.forwarded, m.counters.dropped) == (0, {problem.value: 1})
    assert len(m.flows) == 0


def test_every_drop_reason_word_is_a_proxy_header_one() -> None:
    assert all(problem.value.startswith("proxy-header-") for problem in HeaderProblem)


@pytest.mark.parametrize(
    ("path", "client", "to", "reason"),
    [
        (V4, ("203.0.113.7", 0), ("198.51.100.1", 53), "zero-port"),
        (V4, ("0.0.0.0", 4242), ("198.51.100.1", 53), "unspecified-source"),
        (V4, ("255.255.255.255", 4242), ("198.51.100.1", 53), "broadcast-source"),
        (V4, ("224.0.0.1", 4242), ("198.51.100.1", 53), "multicast-source"),
        (V4, ("127.0.0.1", 4242), ("198.51.100.1", 53), "loopback-source"),
        (V6, ("fe80::7", 4242), ("2001:db8:51::1", 53), "link-local-source"),
        (V4, ("2001:db8:113::7", 4242), ("2001:db8:51::1", 53), "family-mismatch"),
        (V6, ("203.0.113.7", 4242), ("198.51.100.1", 53), "family-mismatch"),
    ],
)
def test_a_headers_client_obeys_every_rule_of_a_client(
    path: Path, client: tuple[str, int], to: tuple[str, int], reason: str
) -> None:
    m = machine()
    action, _ = proxied(m, path, LB, build(client, to) + b"x")
    assert action == Drop(reason, path, LB)
    assert m.counters.dropped == {reason: 1}


def test_an_ipv6_client_behind_an_ipv4_load_balancer_reaches_an_ipv6_backend() -> None:
    action, _ = proxied(machine(), V6, LB, build(("2001:db8:113::7", 4242), ("2001:db8:51::1", 53)))
    assert isinstance(action, OpenFlow)
    assert action.flow.presented == ("2001:db8:113::7", 4242)


def test_a_v4_mapped_client_in_an_ipv6_header_is_presented_as_plain_ipv4() -> None:
    header = build(("::ffff:203.0.113.7", 4242), ("::ffff:198.51.100.1", 53))
    action, _ = proxied(machine(), V4, LB6, header)
    assert isinstance(action, OpenFlow)
    assert action.flow.presented == ("203.0.113.7", 4242)


def test_a_local_header_presents_the_load_balancer_itself_in_a_flow_of_its_own() -> None:
    m = machine()
    datagram = build_local() + b"health"
    action, skip = proxied(m, V4, LB, datagram)
    assert isinstance(action, OpenFlow)
    assert action.flow.presented == ("198.51.100.20", 40000)
    assert datagram[skip:] == b"health"
    m.flow_opened(action.flow, cast(socket.socket, object()))
    assert proxied(m, V4, LB, datagram, 2.0)[0] is action.flow
    client = opened(m, V4, LB, via(LB, ("203.0.113.7", 4242)))
    assert client is not action.flow
    # A header naming the load balancer's own address and port presents the same source: the same flow.
    assert proxied(m, V4, LB, via(LB, ("198.51.100.20", 40000)), 3.0)[0] is action.flow


def test_a_local_source_named_by_a_header_is_sent_once() -> None:
    class Local:
        def __call__(self, address: str) -> bool:
            return address == "192.0.2.1"

        def forget(self) -> None:
            pass

    m = machine(is_local=Local())
    action, _ = proxied(m, V4, LB, via(LB, ("192.0.2.1", 5000)))
    assert action == SendOnce(V4, LB, ("192.0.2.1", 5000))


def test_one_load_balancers_clients_get_their_own_flows_and_hit_them() -> None:
    m = machine()
    a = opened(m, V4, LB, via(LB, ("203.0.113.7", 4242)))
    b = opened(m, V4, LB, via(LB, ("203.0.113.8", 4242)))
    assert a is not b
    assert proxied(m, V4, LB, via(LB, ("203.0.113.7", 4242)), 2.0)[0] is a
    assert proxied(m, V4, LB, via(LB, ("203.0.113.8", 4242)), 2.0)[0] is b
    assert (len(m.flows), m.counters.forwarded) == (2, 4)


def test_a_client_moving_to_another_load_balancer_keeps_its_flow_and_replies_follow_it() -> None:
    m = machine()
    flow = opened(m, V4, LB, via(LB, ("203.0.113.7", 4242)))
    assert proxied(m, V4, LB2, via(LB2, ("203.0.113.7", 4242)), 2.0)[0] is flow
    assert flow.raw_peer == LB2


def test_the_same_header_on_a_path_of_another_family_is_judged_again() -> None:
    m = machine()
    header = build(("::ffff:203.0.113.7", 4242), ("::ffff:198.51.100.1", 53))
    assert isinstance(proxied(m, V4, LB6, header)[0], OpenFlow)
    assert proxied(m, V6, LB6, header)[0] == Drop("family-mismatch", V6, LB6)


def test_header_clients_obey_max_flows_and_the_idle_timeout() -> None:
    m = machine(max_flows=2, idle_timeout=5)
    a = opened(m, V4, LB, via(LB, ("203.0.113.1", 1)), 100.0)
    opened(m, V4, LB, via(LB, ("203.0.113.2", 2)), 100.0)
    action, _ = proxied(m, V4, LB, via(LB, ("203.0.113.3", 3)), 101.0)
    assert isinstance(action, OpenFlow)
    assert m.flow_opened(action.flow, cast(socket.socket, object())) == CloseFlows((a,))
    assert len(m.expire(110.0).flows) == 2


def test_a_truncated_datagram_of_a_trusted_sender_is_dropped_before_its_header_is_read() -> None:
    m = machine()
    assert m.receive(V4, LB, 100, socket.MSG_TRUNC, 1.0) == Drop("truncated", V4, LB)
    assert m.receive_proxied(V4, LB, memoryview(SIGNATURE), socket.MSG_TRUNC, 1.0) == (
        Drop("truncated", V4, LB),
        0,
    )


def test_a_trusted_sender_never_gets_a_flow_under_its_own_address() -> None:
    m = machine()
    opened(m, V4, LB, build_local())
    assert m.receive(V4, LB, 16, 0, 2.0) is READ_HEADER  # its next datagram is read again


# --- --send-proxy-protocol --------------------------------------------------------------------------------

LISTENING = Path("dns", Destination(socket.AF_INET, "192.0.2.2", 53), ("198.51.100.1", 53))
DUAL = Path("dns", Destination(socket.AF_INET, "192.0.2.2", 53), ("::", 53))
CLIENT = sockaddr_bytes(socket.AF_INET, ("203.0.113.7", 4242))


def test_a_flow_of_the_sending_mode_carries_a_header_naming_the_client_and_the_address_it_sent_to() -> None:
    m = ForwardingMachine(send_header=True)
    action = m.receive(LISTENING, CLIENT, 10, 0, 1.0)
    assert isinstance(action, OpenFlow)
    assert bytes(action.flow.header or b"") == build(("203.0.113.7", 4242), ("198.51.100.1", 53))
    assert m.relay  # replies come back to the host's own address and are relayed


def test_on_a_wildcard_listener_the_header_names_the_address_pktinfo_tells() -> None:
    m = ForwardingMachine(send_header=True)
    mapped = sockaddr_bytes(socket.AF_INET6, ("::ffff:203.0.113.7", 4242, 0, 0))
    local = socket.inet_pton(socket.AF_INET6, "::ffff:198.51.100.1")
    action = m.receive(DUAL, mapped, 10, 0, 1.0, local=local)
    assert isinstance(action, OpenFlow)
    # v4-mapped client and address, presented as IPv4: an IPv4 header.
    assert bytes(action.flow.header or b"") == build(("203.0.113.7", 4242), ("198.51.100.1", 53))


def test_a_header_that_cannot_name_both_ends_in_one_family_is_a_family_mismatch() -> None:
    m = ForwardingMachine(send_header=True)
    local = socket.inet_pton(socket.AF_INET6, "2001:db8:51::1")
    assert m.receive(DUAL, CLIENT, 10, 0, 1.0, local=local) == Drop("family-mismatch", DUAL, CLIENT)


def test_a_local_client_of_the_sending_mode_gets_a_kept_flow_that_no_sweep_closes() -> None:
    class Everything:
        def __call__(self, address: str) -> bool:
            return True

        def forget(self) -> None:
            pass

    m = ForwardingMachine(send_header=True, is_local=Everything())
    action = m.receive(LISTENING, CLIENT, 10, 0, 1.0)
    assert isinstance(action, OpenFlow)  # nothing binds its address: no one-shot socket
    m.flow_opened(action.flow, cast(socket.socket, object()))
    assert m.expire(2.0) == CloseFlows(())


def test_with_a_load_balancer_in_front_the_header_sent_names_the_client_its_header_named() -> None:
    trusted = TrustedSources([ipaddress.ip_network("198.51.100.16/28")])
    m = ForwardingMachine(trusted=trusted, send_header=True)
    datagram = via(LB, ("203.0.113.9", 999)) + b"!"
    action, skip = proxied(m, LISTENING, LB, datagram)
    assert isinstance(action, OpenFlow)
    assert bytes(action.flow.header or b"") == build(("203.0.113.9", 999), ("198.51.100.1", 53))
    assert action.flow.raw_peer == LB
    assert datagram[skip:] == b"payload!"


def test_without_a_usable_pktinfo_address_the_header_names_the_hosts_address_toward_the_client() -> None:
    # The activating datagram was queued before IP_PKTINFO was set: its pktinfo names 0.0.0.0.
    m = ForwardingMachine(send_header=True, source_toward={"203.0.113.7": "198.51.100.1"}.get)
    wildcard = Path("dns", Destination(socket.AF_INET, "192.0.2.2", 53), ("0.0.0.0", 53))
    action = m.receive(wildcard, CLIENT, 10, 0, 1.0, local=bytes(4))
    assert isinstance(action, OpenFlow)
    assert bytes(action.flow.header or b"") == build(("203.0.113.7", 4242), ("198.51.100.1", 53))


WILDCARD = Path("dns", Destination(socket.AF_INET, "192.0.2.2", 53), ("0.0.0.0", 53))


def test_a_flows_header_names_the_address_each_datagram_was_sent_to() -> None:
    m = ForwardingMachine(send_header=True)
    one, three = socket.inet_aton("198.51.100.1"), socket.inet_aton("198.51.100.3")
    action = m.receive(WILDCARD, CLIENT, 10, 0, 1.0, local=one)
    assert isinstance(action, OpenFlow)
    m.flow_opened(action.flow, cast(socket.socket, object()))
    first = action.flow.header
    assert bytes(first or b"") == build(("203.0.113.7", 4242), ("198.51.100.1", 53))

    flow = m.receive(WILDCARD, CLIENT, 10, 0, 2.0, local=three)
    assert flow is action.flow
    assert bytes(flow.header or b"") == build(("203.0.113.7", 4242), ("198.51.100.3", 53))
    assert m.receive(WILDCARD, CLIENT, 10, 0, 3.0, local=one) is flow
    assert flow.header is first  # built once per address, not per datagram
    assert m.counters.forwarded == 3


def test_chained_the_header_sent_names_the_destination_the_received_header_named() -> None:
    trusted = TrustedSources([ipaddress.ip_network("198.51.100.16/28")])
    m = ForwardingMachine(trusted=trusted, send_header=True)
    # The load balancer's public address, not the forwarder's listening one (198.51.100.1:53).
    action, _ = proxied(m, LISTENING, LB, via(LB, ("203.0.113.9", 999), ("203.0.113.80", 5353)))
    assert isinstance(action, OpenFlow)
    assert bytes(action.flow.header or b"") == build(("203.0.113.9", 999), ("203.0.113.80", 5353))
    m.flow_opened(action.flow, cast(socket.socket, object()))

    again, _ = proxied(m, LISTENING, LB, via(LB, ("203.0.113.9", 999), ("203.0.113.81", 5353)), 2.0)
    assert again is action.flow
    assert bytes(action.flow.header or b"") == build(("203.0.113.9", 999), ("203.0.113.81", 5353))


def test_chained_an_ipv6_client_behind_an_ipv4_load_balancer_is_named_in_an_ipv6_header() -> None:
    trusted = TrustedSources([ipaddress.ip_network("198.51.100.16/28")])
    m = ForwardingMachine(trusted=trusted, send_header=True)
    received = build(("2001:db8:113::7", 4242), ("2001:db8:51::1", 53))
    action, skip = proxied(m, LISTENING, LB, received + b"payload")  # an IPv4 listener and backend
    assert isinstance(action, OpenFlow), action
    assert bytes(action.flow.header or b"") == received
    assert skip == len(received)


def test_chained_a_received_header_whose_ends_differ_in_family_is_a_family_mismatch() -> None:
    trusted = TrustedSources([ipaddress.ip_network("198.51.100.16/28")])
    m = ForwardingMachine(trusted=trusted, send_header=True)
    received = build(("::ffff:203.0.113.7", 4242), ("2001:db8:51::1", 53))  # the client is IPv4 really
    action, _ = proxied(m, LISTENING, LB, received + b"payload")
    assert action == Drop("family-mismatch", LISTENING, LB)


def test_a_header_refused_for_its_checksum_is_not_summed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(data: bytes | bytearray | memoryview) -> int:
        calls.append(len(data))
        return crc32c(data)

    monkeypatch.setattr(proxy_protocol, "crc32c", counting)
    m = machine()
    noop = bytes((TLV_NOOP,)) + (60000).to_bytes(2, "big") + bytes(60000)
    crc = bytes((TLV_CRC32C,)) + (4).to_bytes(2, "big") + b"bad!"
    header = via(LB, ("203.0.113.7", 4242))[:-7]
    length = int.from_bytes(header[14:16], "big") + len(noop) + len(crc)
    wrong = header[:14] + length.to_bytes(2, "big") + header[16:] + noop + crc
    for now in (1.0, 2.0, 3.0):
        action, _ = proxied(m, V4, LB, wrong + b"payload", now)
        assert action == Drop("proxy-header-checksum", V4, LB)
    assert calls == [len(wrong)]
    assert m.counters.dropped == {"proxy-header-checksum": 3}


def test_the_header_cache_is_bounded_in_bytes_whatever_the_headers_size() -> None:
    # The adversarial run: thousands of distinct ~65 KB headers (valid, naming 0.0.0.0, so all dropped).
    m = machine()
    noop = bytes((TLV_NOOP,)) + (65000).to_bytes(2, "big") + bytes(65000)
    for port in range(1, 301):
        header = build(("0.0.0.0", port), ("198.51.100.1", 53))
        length = int.from_bytes(header[14:16], "big") + len(noop)
        action, _ = proxied(m, V4, LB, header[:14] + length.to_bytes(2, "big") + header[16:] + noop)
        assert action == Drop("unspecified-source", V4, LB)
    assert 0 < m._headers.bytes <= HEADER_CACHE_BYTES
    assert len(m._headers) < 300


def test_a_flow_reached_through_two_listeners_names_the_one_each_datagram_came_through() -> None:
    m = ForwardingMachine(send_header=True)
    other = Path("dns3", Destination(socket.AF_INET, "192.0.2.2", 53), ("198.51.100.3", 53))
    action = m.receive(LISTENING, CLIENT, 10, 0, 1.0)
    assert isinstance(action, OpenFlow)
    m.flow_opened(action.flow, cast(socket.socket, object()))
    flow = m.receive(other, CLIENT, 10, 0, 2.0)  # one flow per 4-tuple: the same one
    assert flow is action.flow
    assert bytes(flow.header or b"") == build(("203.0.113.7", 4242), ("198.51.100.3", 53))
    assert m.receive(LISTENING, CLIENT, 10, 0, 3.0) is flow
    assert bytes(flow.header or b"") == build(("203.0.113.7", 4242), ("198.51.100.1", 53))


def test_distinct_large_checked_headers_beyond_the_budget_are_dropped_counted_and_checked_again_later() -> (
    None
):
    # ~100 distinct 60 KB headers with a right CRC32C in one instant: only about 1 MiB of them is summed.
    m = machine()
    noop = bytes((TLV_NOOP,)) + (60000).to_bytes(2, "big")
    crc = bytes((TLV_CRC32C,)) + (4).to_bytes(2, "big") + bytes(4)

    def checked(port: int) -> bytes:
        header = build(("203.0.113.7", port), ("198.51.100.1", 53))
        length = int.from_bytes(header[14:16], "big") + len(noop) + 60000 + len(crc)
        unsigned = header[:14] + length.to_bytes(2, "big") + header[16:] + noop + bytes(60000) + crc
        return unsigned[:-4] + crc32c(unsigned).to_bytes(4, "big")

    actions = [proxied(m, V4, LB, checked(port) + b"payload", 1.0)[0] for port in range(1000, 1100)]
    opened_now = sum(isinstance(action, OpenFlow) for action in actions)
    assert 0 < opened_now < 20
    assert m.counters.dropped == {"proxy-header-checksum-budget": 100 - opened_now}
    # Not remembered as refused: once the budget has refilled, the same header is checked and believed.
    action, _ = proxied(m, V4, LB, checked(1099) + b"payload", 3.0)
    assert isinstance(action, OpenFlow)
