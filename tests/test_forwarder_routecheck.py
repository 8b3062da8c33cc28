"""Relay mode's start-up route check: RTM_GETROUTE requests and answers as bytes, the warning's `ip`
commands, and one real question to the kernel (route lookups need no privileges)."""

import errno
import socket
import struct

import pytest

from forwarder.core.destination import Destination
from forwarder.service.routecheck import (
    NLMSG_ERROR,
    RTM_GETROUTE,
    RTM_NEWROUTE,
    RTN_LOCAL,
    RTN_UNICAST,
    RouteAnswer,
    ask,
    mark_routing_warning,
    parse_mark_rules,
    parse_route_answer,
    relay_rule_text,
    route_query,
    rules_dump_request,
    sample_client,
)
from netlab import Lab
from netlab.lab import netns
from netlab.lab.tproxy import steer
from netlab.topology.shipped import seed_deployment


def attributes(message: bytes) -> dict[int, bytes]:
    found = {}
    offset = 16 + 12
    while offset < len(message):
        length, kind = struct.unpack_from("=HH", message, offset)
        found[kind] = message[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def test_a_query_names_the_reply_as_policy_rules_see_it() -> None:
    message = route_query(socket.AF_INET, "203.0.113.1", source="192.0.2.2", iif=7, ports=(5353, 40000))
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", message)
    assert (length, kind, flags) == (len(message), RTM_GETROUTE, 1)
    family, dst_len, src_len = message[16:19]
    assert (family, dst_len, src_len) == (socket.AF_INET, 32, 32)
    assert attributes(message) == {
        1: socket.inet_pton(socket.AF_INET, "203.0.113.1"),
        2: socket.inet_pton(socket.AF_INET, "192.0.2.2"),
        3: struct.pack("=I", 7),
        27: bytes([socket.IPPROTO_UDP]),
        28: struct.pack("!H", 5353),
        29: struct.pack("!H", 40000),
    }


def answer(route_type: int, oif: int) -> bytes:
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 254, 0, 0, route_type, 0)
    body += struct.pack("=HHI", 8, 4, oif)  # RTA_OIF
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWROUTE, 0, 1, 0) + body


def test_an_answer_gives_the_route_type_and_its_interface() -> None:
    assert parse_route_answer(answer(RTN_UNICAST, 3)) == RouteAnswer(RTN_UNICAST, 3)
    assert parse_route_answer(answer(RTN_LOCAL, 1)).local


def test_an_error_answer_gives_its_errno() -> None:
    message = (
        struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -errno.EHOSTUNREACH) + bytes(16)
    )
    assert parse_route_answer(message) == RouteAnswer(error=errno.EHOSTUNREACH)
    assert not parse_route_answer(message).local
    assert parse_route_answer(b"short").error == errno.EBADMSG


def test_the_rule_to_add_matches_the_backends_replies_only() -> None:
    assert relay_rule_text(Destination(socket.AF_INET, "192.0.2.2", 5353)) == (
        "`ip rule add from 192.0.2.2 ipproto udp sport 5353 lookup 100` and "
        "`ip route add local 0.0.0.0/0 dev lo table 100`"
    )
    assert relay_rule_text(Destination(socket.AF_INET6, "2001:db8:2::2", 53)) == (
        "`ip -6 rule add from 2001:db8:2::2 ipproto udp sport 53 lookup 100` and "
        "`ip -6 route add local ::/0 dev lo table 100`"
    )


def test_for_a_backend_on_the_host_itself_the_rule_is_go_mmproxys() -> None:
    assert relay_rule_text(Destination(socket.AF_INET, "127.0.0.1", 5353)) == (
        "`ip rule add from 127.0.0.0/8 iif lo lookup 100` and `ip route add local 0.0.0.0/0 dev lo table 100`"
    )


def test_the_sample_client_is_never_one_of_the_hosts_addresses() -> None:
    assert sample_client(socket.AF_INET, lambda address: address == "203.0.113.1") == "198.51.100.1"
    assert sample_client(socket.AF_INET6, lambda _: False) == "2001:db8::1"


def test_the_kernel_answers_that_loopback_is_local() -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:
        sock.settimeout(5)
        assert ask(sock, route_query(socket.AF_INET, "127.0.0.1")).local


def _rule_message(mark: int | None, table: int) -> bytes:
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, table if table < 256 else 252, 0, 0, 1, 0)
    if mark is not None:
        body += struct.pack("=HHI", 8, 10, mark)  # FRA_FWMARK
    body += struct.pack("=HHI", 8, 15, table)  # FRA_TABLE
    return struct.pack("=IHHII", 16 + len(body), 32, 2, 1, 0) + body


def test_a_rules_dump_yields_the_mark_rules_with_their_tables_until_done() -> None:
    done = struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0)
    found, ended = parse_mark_rules(_rule_message(0x10, 7000) + _rule_message(None, 254))
    assert (found, ended) == ([(0x10, 7000)], False)
    assert parse_mark_rules(done) == ([], True)
    request = rules_dump_request(socket.AF_INET6)
    assert struct.unpack_from("=HH", request, 4) == (34, 0x301)


def test_a_cut_or_garbage_dump_ends_without_inventing_rules() -> None:
    assert parse_mark_rules(_rule_message(1, 100)[:20]) == ([], True)


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("pieces", "says"),
    [
        ({"rule": False, "route": False}, "no IPv4 policy rule matches a firewall mark"),
        ({"route": False}, "lead to no local route"),
        ({}, None),
    ],
)
def test_the_start_up_check_names_the_missing_mark_routing(
    lab: Lab, pieces: dict[str, bool], says: str | None
) -> None:
    lab.build(seed_deployment())
    steer(lab["host"], version=4, to_port=27000, dports=27001, **pieces)  # type: ignore[arg-type]

    warning = netns.run_in(lab["host"].namespace, lambda: mark_routing_warning(socket.AF_INET))

    if says is None:
        assert warning is None
    else:
        assert warning is not None
        assert says in warning
        assert "ip route add local 0.0.0.0/0 dev lo table" in warning
