"""The forwarder's decisions, without sockets."""

import socket
from collections.abc import Callable

import pytest
from forwarder_helpers import InspectableTable

from forwarder.core.addresses import is_loop, served_families
from forwarder.core.counters import Counters, DropReason
from forwarder.core.flows import Entry
from forwarder.core.policy import presentable_source
from forwarder.io.sockets import probe_broadcast
from forwarder.service.mapping import duplicates


def test_ipv4_client_is_presented_as_itself() -> None:
    assert presentable_source(("203.0.113.7", 4242), socket.AF_INET) == ("203.0.113.7", 4242)


def test_v4_mapped_client_is_presented_as_plain_ipv4_to_an_ipv4_backend() -> None:
    assert presentable_source(("::ffff:203.0.113.7", 4242, 0, 0), socket.AF_INET) == ("203.0.113.7", 4242)


def test_ipv6_client_cannot_be_presented_to_an_ipv4_backend() -> None:
    assert presentable_source(("2001:db8::7", 4242, 0, 0), socket.AF_INET) is DropReason.FAMILY_MISMATCH


def test_ipv4_client_cannot_be_presented_to_an_ipv6_backend() -> None:
    assert presentable_source(("203.0.113.7", 4242), socket.AF_INET6) is DropReason.FAMILY_MISMATCH


def test_loopback_client_is_dropped_because_the_kernel_refuses_that_source() -> None:
    assert presentable_source(("127.0.0.1", 4242), socket.AF_INET) is DropReason.LOOPBACK_SOURCE
    assert presentable_source(("::1", 4242, 0, 0), socket.AF_INET6) is DropReason.LOOPBACK_SOURCE


def test_a_client_with_source_port_zero_is_dropped_because_binding_port_zero_picks_another() -> None:
    assert presentable_source(("203.0.113.7", 0), socket.AF_INET) is DropReason.ZERO_PORT


def test_a_link_local_ipv6_client_is_dropped_because_its_address_is_meaningless_off_its_link() -> None:
    assert presentable_source(("fe80::7%eth0", 4242, 0, 2), socket.AF_INET6) is DropReason.LINK_LOCAL_SOURCE


@pytest.mark.parametrize(
    ("client", "family"),
    [
        (("0.0.0.0", 4242), socket.AF_INET),
        (("::ffff:0.0.0.0", 4242, 0, 0), socket.AF_INET),
        (("::", 4242, 0, 0), socket.AF_INET6),
    ],
)
def test_an_unspecified_client_is_dropped_because_the_kernel_would_pick_the_source(
    client: tuple[str, int], family: socket.AddressFamily
) -> None:
    assert presentable_source(client, family) is DropReason.UNSPECIFIED_SOURCE


@pytest.mark.parametrize(
    ("client", "family"),
    [
        (("224.0.0.1", 4242), socket.AF_INET),
        (("239.1.2.3", 4242), socket.AF_INET),
        (("ff02::1", 4242, 0, 0), socket.AF_INET6),
    ],
)
def test_a_multicast_client_is_dropped_because_the_kernel_would_pick_the_source(
    client: tuple[str, int], family: socket.AddressFamily
) -> None:
    assert presentable_source(client, family) is DropReason.MULTICAST_SOURCE


def test_the_limited_broadcast_client_is_dropped_without_asking_the_host() -> None:
    assert presentable_source(("255.255.255.255", 4242), socket.AF_INET) is DropReason.BROADCAST_SOURCE


def test_a_directed_broadcast_of_a_host_subnet_is_dropped_and_other_addresses_are_presented() -> None:
    asked: list[str] = []

    def is_broadcast(address: str) -> bool:
        asked.append(address)
        return address == "198.51.100.255"

    assert (
        presentable_source(("198.51.100.255", 53), socket.AF_INET, is_broadcast)
        is DropReason.BROADCAST_SOURCE
    )
    assert presentable_source(("::ffff:198.51.100.255", 53, 0, 0), socket.AF_INET, is_broadcast) is (
        DropReason.BROADCAST_SOURCE
    )
    assert presentable_source(("203.0.113.255", 53), socket.AF_INET, is_broadcast) == ("203.0.113.255", 53)
    assert presentable_source(("2001:db8::ff", 53, 0, 0), socket.AF_INET6, is_broadcast) == (
        "2001:db8::ff",
        53,
    )
    assert asked == ["198.51.100.255", "198.51.100.255", "203.0.113.255"]  # IPv6 has no broadcast


def test_status_line_counts_forwarded_and_drops_by_reason() -> None:
    counters = Counters()
    counters.forwarded = 5
    counters.drop(DropReason.TRUNCATED)
    counters.drop(DropReason.SEND_ERROR, "ECONNREFUSED")
    assert counters.summary(10, flows=3) == (
        "5 datagrams forwarded in the last 10 seconds, 2 dropped (send-error:ECONNREFUSED 1, truncated 1);"
        " since start 5 forwarded, 2 dropped; 3 flows."
    )


def test_totals_since_start_survive_the_interval_reset() -> None:
    counters = Counters()
    counters.forwarded = 3
    counters.drop(DropReason.FAMILY_MISMATCH)
    counters.reset()
    counters.forwarded = 1
    assert counters.summary(10) == (
        "1 datagrams forwarded in the last 10 seconds, 0 dropped; since start 4 forwarded, 1 dropped."
    )


def test_in_relay_mode_the_status_line_counts_replies_and_their_drops_next_to_the_datagrams() -> None:
    counters = Counters(relay=True)
    counters.forwarded = 12
    counters.relayed = 11
    counters.reply_dropped["reply-unmatched"] += 1
    assert counters.summary(10, flows=5) == (
        "12 datagrams forwarded in the last 10 seconds, 0 dropped; 11 replies relayed, 1 dropped"
        " (reply-unmatched 1); since start 12 forwarded, 0 dropped, 11 replies relayed, 1 replies dropped;"
        " 5 flows."
    )
    counters.reset()
    assert counters.summary(10) == (
        "0 datagrams forwarded in the last 10 seconds, 0 dropped; 0 replies relayed, 0 dropped;"
        " since start 12 forwarded, 0 dropped, 11 replies relayed, 1 replies dropped."
    )


def test_icmp_errors_are_in_the_status_line_once_there_are_any_and_in_the_totals_after() -> None:
    counters = Counters()
    assert "ICMP" not in counters.summary(10)
    counters.icmp_errors["backend-unreachable"] += 3
    assert counters.summary(10) == (
        "0 datagrams forwarded in the last 10 seconds, 0 dropped; 3 ICMP errors (backend-unreachable 3);"
        " since start 0 forwarded, 0 dropped, 3 ICMP errors."
    )
    counters.reset()
    assert counters.summary(10) == (
        "0 datagrams forwarded in the last 10 seconds, 0 dropped; since start 0 forwarded, 0 dropped,"
        " 3 ICMP errors."
    )


def test_the_totals_since_start_include_the_current_interval() -> None:
    counters = Counters(relay=True)
    counters.forwarded, counters.relayed = 2, 1
    counters.drop(DropReason.TRUNCATED)
    counters.reset()
    counters.forwarded = 3
    counters.drop(DropReason.TRUNCATED)
    totals = counters.since_start()
    assert (totals.forwarded, totals.dropped, totals.relayed) == (5, {"truncated": 2}, 1)


@pytest.mark.parametrize(
    ("family", "bound", "v6only", "expected"),
    [
        (socket.AF_INET, "0.0.0.0", False, {socket.AF_INET}),
        (socket.AF_INET6, "::", False, {socket.AF_INET, socket.AF_INET6}),
        (socket.AF_INET6, "::", True, {socket.AF_INET6}),
        (socket.AF_INET6, "2001:db8::1", False, {socket.AF_INET6}),
        (socket.AF_INET6, "::ffff:192.0.2.1", False, {socket.AF_INET}),
    ],
)
def test_families_a_listener_can_serve(
    family: socket.AddressFamily, bound: str, v6only: bool, expected: set[socket.AddressFamily]
) -> None:
    assert served_families(family, bound, v6only) == expected


def local_is(addresses: set[str]) -> Callable[[str], bool]:
    return lambda address: address in addresses


def test_destination_equal_to_a_listener_is_a_loop() -> None:
    v4 = frozenset({socket.AF_INET})
    assert is_loop(("192.0.2.1", 53), ("192.0.2.1", 53), v4, local_is(set()))
    assert not is_loop(("192.0.2.1", 54), ("192.0.2.1", 53), v4, local_is({"192.0.2.1"}))
    assert not is_loop(("192.0.2.2", 53), ("192.0.2.1", 53), v4, local_is({"192.0.2.2"}))


def test_local_destination_on_the_port_of_a_wildcard_listener_is_a_loop() -> None:
    dual = frozenset({socket.AF_INET, socket.AF_INET6})
    assert is_loop(("192.0.2.1", 53), ("::", 53), dual, local_is({"192.0.2.1"}))
    assert not is_loop(("192.0.2.9", 53), ("::", 53), dual, local_is({"192.0.2.1"}))
    assert not is_loop(("192.0.2.1", 53), ("::", 53), frozenset({socket.AF_INET6}), local_is({"192.0.2.1"}))


class Item(Entry):
    """A table entry with a name, standing in for a flow."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def names(entries: list[Item]) -> list[str]:
    return [entry.name for entry in entries]


def test_flow_table_hit_returns_the_entry_and_misses_return_none() -> None:
    table: InspectableTable[str, Item] = InspectableTable(4, 30)
    a = Item("A")
    assert table.add("a", a, now=0) == []
    assert table.get("a", now=1) is a
    assert table.get("b", now=1) is None


def test_flow_table_lookup_is_the_plain_dict_lookup_of_the_hot_path() -> None:
    table: InspectableTable[str, Item] = InspectableTable(4, 30)
    a = Item("A")
    table.add("a", a, now=0)
    assert table.lookup("a") is a
    assert table.lookup("b") is None


def test_flow_table_evicts_the_least_recently_used_flow_when_full() -> None:
    table: InspectableTable[str, Item] = InspectableTable(2, 30)
    table.add("a", Item("A"), now=0)
    table.add("b", Item("B"), now=1)
    table.get("a", now=2)  # a is now more recent than b
    assert names(table.add("c", Item("C"), now=3)) == ["B"]
    assert set(table) == {"a", "c"}
    assert names(table.add("d", Item("D"), now=4)) == ["A"]  # a's use was before c's insertion
    assert set(table) == {"c", "d"}


def test_flow_table_spares_a_flow_hit_in_the_same_instant_it_was_opened() -> None:
    # The engine takes one timestamp per batch: a flow opened and hit within it is in use, not idle.
    table: InspectableTable[str, Item] = InspectableTable(2, 30)
    table.add("hot", Item("H"), now=5)
    table.get("hot", now=5)
    table.add("b", Item("B"), now=5)
    assert names(table.add("c", Item("C"), now=5)) == ["B"]
    assert set(table) == {"hot", "c"}


def test_flow_table_expires_flows_idle_longer_than_the_timeout() -> None:
    table: InspectableTable[str, Item] = InspectableTable(8, 10)
    table.add("old", Item("O"), now=0)
    table.add("busy", Item("B"), now=0)
    table.get("busy", now=15)
    assert names(table.expire(now=20)) == ["O"]
    assert list(table) == ["busy"]


def test_flow_table_needs_room_for_one_flow() -> None:
    with pytest.raises(ValueError, match="capacity 0"):
        InspectableTable(0, 10)


def test_duplicates_lists_each_repeated_name_once() -> None:
    assert duplicates(["a", "b", "a", "c", "a", "b"]) == ["a", "b"]


def test_the_broadcast_probe_tells_a_subnet_broadcast_from_an_ordinary_address() -> None:
    # 127.0.0.0/8 on lo has the broadcast route 127.255.255.255 on every Linux host.
    assert probe_broadcast("127.255.255.255") is True
    assert probe_broadcast("127.0.0.255") is False
    assert probe_broadcast("127.0.0.1") is False
