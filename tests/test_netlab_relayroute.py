"""netlab.service.relay's rule builder (relay_rule, install_relay_route): relay mode's routing on a host
node, made with pyroute2: the rule's selectors, the local table, and removal."""

import socket

import pytest
from pyroute2 import IPRoute

from netlab import Lab
from netlab.service.relay import backend_errors_ruleset, install_relay_route, relay_rule
from netlab.topology.shipped import seed_deployment


def test_the_rule_selects_the_backends_udp_replies_from_its_port_only() -> None:
    assert relay_rule("192.0.2.2", 5353) == {
        "family": socket.AF_INET,
        "table": 100,
        "priority": 100,
        "src": "192.0.2.2",
        "src_len": 32,
        "ip_proto": 17,
        "sport_range": "5353:5353",
    }
    assert relay_rule("2001:db8:2::2", 53)["src_len"] == 128


def test_for_a_backend_on_the_host_the_rule_is_loopback_sources_from_lo() -> None:
    rule = relay_rule("127.0.0.1", 5353)
    assert (rule["src"], rule["src_len"], rule["iifname"]) == ("127.0.0.0", 8, "lo")
    assert "sport_range" not in rule


def test_the_icmp_error_marks_cover_errors_only_in_both_families() -> None:
    text = backend_errors_ruleset(["192.0.2.2", "2001:db8:2::2"])
    assert (
        "ip saddr 192.0.2.2 icmp type { destination-unreachable, time-exceeded, parameter-problem }" in text
    )
    assert "ip6 saddr 2001:db8:2::2 icmpv6 type { destination-unreachable, packet-too-big," in text
    assert "echo" not in text


@pytest.mark.privileged
def test_installed_routing_is_in_the_host_and_removed_again(lab: Lab) -> None:
    lab.build(seed_deployment())
    relay = install_relay_route(lab["host"], "192.0.2.2", 5353)

    with IPRoute(netns=lab["host"].namespace) as ipr:
        rules = [rule for rule in ipr.get_rules(family=socket.AF_INET) if rule.get_attr("FRA_TABLE") == 100]
        routes = ipr.get_routes(family=socket.AF_INET, table=100)
    assert len(rules) == 1
    assert rules[0].get_attr("FRA_SRC") == "192.0.2.2"
    assert rules[0].get_attr("FRA_IP_PROTO") == 17
    assert [route["type"] for route in routes] == [2]  # RTN_LOCAL

    relay.remove()
    with IPRoute(netns=lab["host"].namespace) as ipr:
        assert not [
            rule for rule in ipr.get_rules(family=socket.AF_INET) if rule.get_attr("FRA_TABLE") == 100
        ]
        assert not ipr.get_routes(family=socket.AF_INET, table=100)
