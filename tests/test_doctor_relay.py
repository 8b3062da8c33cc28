"""`netlab doctor` in relay mode: the forwarder's command line says the mode and the backend's reply ports;
the kernel says whether those replies, and only those, are delivered to the host; each missing piece comes
with its fix. The scenarios doctor-relay-* break one thing each through `netlab run`; these tests pin the
findings' words and fixes.

    client 198.51.100.10 --- 198.51.100.1 [host] 192.0.2.1 --- 192.0.2.2 backend (answers from 5353)
"""

import pytest

from netlab import Lab
from netlab.doctor import Deployment, Finding, NamespaceProbe, diagnose
from netlab.doctor_relay import _tracks_connections, relay_settings
from netlab.relayroute import enable_reassembly, install_relay_route
from netlab.topologies import seed_deployment


def test_the_mode_and_the_reply_ports_are_read_off_the_forwarders_command_line() -> None:
    argv = [
        "--stats-interval",
        "0.2",
        "--reply",
        "relay",
        "192.0.2.2:5353",
        "dns=192.0.2.2:53",
        "192.0.2.9:1",
    ]
    assert relay_settings(argv, "192.0.2.2") == (True, [53, 5353])
    assert relay_settings(["--reply=relay", "[2001:db8:2::2]:5353"], "2001:db8:2::2") == (True, [5353])
    assert relay_settings(["192.0.2.2:27000"], "192.0.2.2") == (False, [27000])


def test_connection_tracking_is_recognised_in_a_ct_rule_or_a_nat_chain() -> None:
    ct_rule = {"rule": {"expr": [{"match": {"left": {"ct": {"key": "state"}}, "right": ["established"]}}]}}
    nat_chain = {"chain": {"type": "nat", "hook": "postrouting"}}
    plain = {"rule": {"expr": [{"match": {"left": {"payload": {"field": "saddr"}}, "right": "192.0.2.2"}}]}}
    assert _tracks_connections([ct_rule])
    assert _tracks_connections([nat_chain])
    assert not _tracks_connections([plain])


def relay_deployment(lab: Lab) -> Deployment:
    return Deployment(
        host=NamespaceProbe("host", lab["host"].namespace),
        backend=NamespaceProbe("backend", lab["backend"].namespace),
        backend_address="192.0.2.2",
        host_address="198.51.100.1",
        clients=["198.51.100.10", "203.0.113.7"],
        host_backend_address="192.0.2.1",
        reply="relay",
        backend_ports=[5353],
    )


def problems(lab: Lab) -> list[Finding]:
    return [finding for finding in diagnose(relay_deployment(lab)) if not finding.ok]


@pytest.mark.privileged
def test_a_healthy_relay_set_up_has_no_findings_and_needs_no_reply_rewrite(lab: Lab) -> None:
    lab.build(seed_deployment())
    install_relay_route(lab["host"], "192.0.2.2", 5353)
    enable_reassembly(lab["host"])
    assert problems(lab) == []


@pytest.mark.privileged
def test_a_missing_relay_rule_is_named_with_the_rules_to_add(lab: Lab) -> None:
    lab.build(seed_deployment())
    enable_reassembly(lab["host"])
    [finding] = problems(lab)
    assert finding.check == "relay rule"
    assert "replies from 192.0.2.2:5353 are not delivered to host's sockets: the kernel forwards them" in (
        finding.detail
    )
    assert finding.fix == (
        "netlab exec host -- ip rule add from 192.0.2.2 ipproto udp sport 5353 lookup 100 && "
        "ip route add local 0.0.0.0/0 dev lo table 100"
    )


@pytest.mark.privileged
def test_a_rule_for_all_of_the_backends_udp_is_named_as_swallowing_its_traffic(lab: Lab) -> None:
    lab.build(seed_deployment())
    install_relay_route(lab["host"], "192.0.2.2", None)  # ipproto udp, any port
    enable_reassembly(lab["host"])
    [finding] = problems(lab)
    assert finding.check == "relay rule swallows backend traffic"
    assert finding.fix.endswith(
        "ip rule del from 192.0.2.2 lookup 100 && "
        "ip rule add from 192.0.2.2 ipproto udp sport 5353 lookup 100"
    )


@pytest.mark.privileged
def test_without_reassembly_the_fix_is_a_connection_tracking_rule(lab: Lab) -> None:
    lab.build(seed_deployment())
    install_relay_route(lab["host"], "192.0.2.2", 5353)
    [finding] = problems(lab)
    assert finding.check == "relay reassembly"
    assert "ct state" in finding.fix
