"""`netlab doctor` for tproxy: a forwarder serving a port range on one socket (`FIRST-LAST@HOST`) or reading
every relayed reply from one socket (`--reply-tproxy PORT`) needs the nft tproxy rule, a policy rule for
its mark and a local route in that rule's table. The doctor reads the range, the socket and the port from
the command line (a forwarder still waiting for its first datagram), reads the ruleset with `nft -j`, asks
the kernel where a marked datagram goes, and names each missing piece with the commands that add it.

    client 198.51.100.10, 2001:db8:51::10 --- 198.51.100.1, 2001:db8:51::1 [host] 192.0.2.1, 2001:db8:2::1
        --- 192.0.2.2, 2001:db8:2::2 backend                                            (dual-stack.toml)
    a service address the host does not own: 192.0.2.100 (a floating address routed to it)
"""

import shlex
from collections.abc import Mapping
from typing import Any

import pytest

from netlab import Lab, load_topology, start_forwarder
from netlab.doctor.checks import Deployment, Finding, diagnose
from netlab.doctor.probes import NamespaceProbe, forwarder_arguments
from netlab.doctor.tproxy import TproxyRule, tproxy_rules, uncovered
from netlab.fixtures import fixtures_dir
from netlab.lab.nft import apply_ruleset
from netlab.lab.tproxy import steer
from netlab.service.launch import (
    ListenSocket,
    parse_range_destination,
    range_listeners,
    reply_tproxy_port,
)
from netlab.service.relay import install_relay_tproxy
from netlab.service.replypath import enable_reply_path

V4 = {"backend": "192.0.2.2", "host": "198.51.100.1", "gateway": "192.0.2.1", "clients": ["198.51.100.10"]}
V6 = {
    "backend": "2001:db8:2::2",
    "host": "2001:db8:51::1",
    "gateway": "2001:db8:2::1",
    "clients": ["2001:db8:51::10"],
}
ACTIVATOR = ["/usr/bin/systemd-socket-activate", "--datagram"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("27000-27099@192.0.2.2", ("27000-27099@192.0.2.2", None, 27000, 27099, "192.0.2.2", 27000, 27099)),
        (
            "game=27000-27099@192.0.2.2:5000",
            ("game=27000-27099@192.0.2.2:5000", "game", 27000, 27099, "192.0.2.2", 5000, 5000),
        ),
        (
            "10000-10009@[2001:db8::2]:30000-30009",
            ("10000-10009@[2001:db8::2]:30000-30009", None, 10000, 10009, "2001:db8::2", 30000, 30009),
        ),
        (
            "10-19@backend.example:30-39",
            ("10-19@backend.example:30-39", None, 10, 19, "backend.example", 30, 39),
        ),
    ],
)
def test_a_range_destination_is_read_with_the_ports_its_backend_answers_from(
    text: str, expected: tuple[object, ...]
) -> None:
    destination = parse_range_destination(text)
    assert destination is not None
    assert tuple(destination.__dict__.values()) == expected


@pytest.mark.parametrize(
    "text",
    ["192.0.2.2:27000", "27099-27000@192.0.2.2", "0-10@192.0.2.2", "1-70000@192.0.2.2",
     "10-19@192.0.2.2:30-31", "10-19@", "10-19@192.0.2.2:x", "10-19@a@b"],
)  # fmt: skip
def test_a_plain_or_malformed_destination_is_no_range_the_forwarder_judges_it(text: str) -> None:
    assert parse_range_destination(text) is None


def test_each_range_is_paired_with_its_socket_by_position_or_by_name() -> None:
    positional = range_listeners(
        [*ACTIVATOR, "-l", "198.51.100.1:53", "-l", "27000"],
        ["--reply", "relay", "192.0.2.2:53", "27000-27099@192.0.2.2"],
    )
    assert [(item.destination.first, item.socket) for item in positional] == [
        (27000, ListenSocket("::", 27000, None))  # `-l PORT`: a dual-stack socket
    ]
    assert positional[0].socket is not None
    assert positional[0].socket.versions == {4, 6}
    named = range_listeners(
        [*ACTIVATOR, "-l", "198.51.100.1:27000", "-l", "[2001:db8:51::1]:28000", "--fdname=game:voice"],
        ["voice=28000-28010@[2001:db8:2::2]", "game=27000-27099@192.0.2.2"],
    )
    assert [(item.destination.name, item.socket) for item in named] == [
        ("voice", ListenSocket("2001:db8:51::1", 28000, "voice")),
        ("game", ListenSocket("198.51.100.1", 27000, "game")),
    ]
    own = range_listeners([], ["--listen", "0.0.0.0:27000", "27000-27099@192.0.2.2"])
    assert own[0].socket == ListenSocket("0.0.0.0", 27000, None)
    held = range_listeners(["/usr/bin/systemd-socket-activate"], ["27000-27099@192.0.2.2"])
    assert held[0].socket is None  # sockets held by PID 1 (or the lab): the command line does not say


def test_the_reply_socket_port_is_read_in_both_spellings_and_is_not_taken_for_a_destination() -> None:
    argv = ["--reply", "relay", "--reply-tproxy", "40000", "27000-27099@192.0.2.2"]
    assert reply_tproxy_port(argv) == 40000
    assert reply_tproxy_port(["--reply-tproxy=41000"]) == 41000
    assert reply_tproxy_port(["--reply", "relay"]) is None
    assert [item.destination.text for item in range_listeners([*ACTIVATOR, "-l", "27000"], argv)] == [
        "27000-27099@192.0.2.2"
    ]


@pytest.mark.parametrize(
    ("argv", "arguments"),
    [
        (["/usr/sbin/systemd-transparent-udp-forwarderd", "-v", "x"], ["-v", "x"]),
        (["/usr/bin/python3", "-I", "-m", "forwarder", "--reply", "relay"], ["--reply", "relay"]),
        (["/opt/bin/python3", "/opt/bin/systemd-transparent-udp-forwarderd", "a"], ["a"]),
    ],
)
def test_the_forwarders_arguments_follow_its_program_however_it_was_started(
    argv: list[str], arguments: list[str]
) -> None:
    assert forwarder_arguments(argv) == arguments


def match(protocol: str, field: str, right: object, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": {"payload": {"protocol": protocol, "field": field}}, "right": right}}


def rule(family: str, table: str, chain: str, *expr: object) -> dict[str, Any]:
    return {"rule": {"family": family, "table": table, "chain": chain, "expr": list(expr)}}


def mark(value: int) -> dict[str, Any]:
    return {"mangle": {"key": {"meta": {"key": "mark"}}, "value": value}}


RULESET: list[dict[str, Any]] = [
    {"table": {"family": "ip", "name": "tp"}},
    {"chain": {"family": "ip", "table": "tp", "name": "pre", "hook": "prerouting", "prio": -150}},
    {"chain": {"family": "ip", "table": "tp", "name": "out", "hook": "output", "prio": -150}},
    {"chain": {"family": "inet", "table": "t2", "name": "pre", "hook": "prerouting", "prio": -150}},
    rule(
        "ip", "tp", "pre",
        match("ip", "daddr", "198.51.100.1"), match("udp", "dport", {"range": [27000, 27099]}),
        mark(1), {"tproxy": {"port": 27000}}, {"accept": None},
    ),
    rule(
        "ip", "tp", "pre",
        match("ip", "saddr", {"prefix": {"addr": "192.0.2.0", "len": 24}}),
        match("udp", "sport", {"set": [5353, {"range": [6000, 6010]}]}),
        mark(2), {"tproxy": {"port": 40000}},
    ),
    rule("ip", "tp", "pre", match("udp", "dport", 53, op="!="), {"tproxy": {"port": 53}}),  # not judged
    rule("ip", "tp", "out", {"tproxy": {"port": 1}}),  # not on the prerouting hook
    rule(
        "inet", "t2", "pre",
        match("udp", "dport", 28000), mark(3), {"tproxy": {"family": "ip6", "port": 28000}},
    ),
]  # fmt: skip


def test_the_tproxy_rules_of_prerouting_chains_are_read_from_nfts_json() -> None:
    ip = __import__("ipaddress").ip_network
    assert tproxy_rules(RULESET) == [
        TproxyRule(4, 27000, 1, (ip("198.51.100.1/32"),), None, ((27000, 27099),), None),
        TproxyRule(4, 40000, 2, None, (ip("192.0.2.0/24"),), None, ((5353, 5353), (6000, 6010))),
        TproxyRule(6, 28000, 3, None, None, ((28000, 28000),), None),
    ]


def test_the_ports_no_rule_covers_are_the_gaps_in_order() -> None:
    assert uncovered((27000, 27099), [(27000, 27099)]) == []
    assert uncovered((27000, 27099), [(27010, 27019), (27050, 27200)]) == [(27000, 27009), (27020, 27049)]
    assert uncovered((27000, 27099), []) == [(27000, 27099)]
    assert uncovered((27000, 27000), [(1, 26999), (27001, 65535)]) == [(27000, 27000)]


def deployment(lab: Lab, family: Mapping[str, object]) -> Deployment:
    return Deployment(
        host=NamespaceProbe("host", lab["host"].namespace),
        backend=NamespaceProbe("backend", lab["backend"].namespace),
        backend_address=str(family["backend"]),
        host_address=str(family["host"]),
        clients=list(family["clients"]),  # type: ignore[call-overload]
        host_backend_address=str(family["gateway"]),
    )


def problems(target: Deployment) -> list[Finding]:
    return [finding for finding in diagnose(target) if not finding.ok]


def apply_fix(lab: Lab, finding: Finding) -> None:
    """Run the finding's fix in the host, as an operator pasting it would."""
    for command in finding.fix.split(" && "):
        lab["host"].check(shlex.split(command.removeprefix("netlab exec host -- ")))


def ranged_lab(lab: Lab, listen: str = "198.51.100.1:27000") -> None:
    """The seed lab in direct mode, a forwarder waiting with ports 27000-27099 on its socket `listen`."""
    lab.build(load_topology("dual-stack"))
    enable_reply_path(lab["host"], "192.0.2.2", "192.0.2.0/24", "198.51.100.1")
    start_forwarder(lab["host"], [listen], ["27000-27099@192.0.2.2"])


@pytest.mark.privileged
def test_a_range_without_its_tproxy_rule_is_named_and_the_fix_heals_it(lab: Lab) -> None:
    ranged_lab(lab)
    [finding] = problems(deployment(lab, V4))
    assert finding.check == "range tproxy rule"
    assert "ports 27000-27099 (of 27000-27099@192.0.2.2) to :27000" in finding.detail
    assert finding.fix.endswith(
        "nft add rule ip transparent_udp_forwarder_range prerouting ip daddr 198.51.100.1 meta l4proto udp "
        "udp dport 27000-27099 meta mark set 0x1 tproxy to :27000 accept"
    )
    apply_fix(lab, finding)
    assert problems(deployment(lab, V4)) == []


@pytest.mark.privileged
def test_the_ports_of_the_range_no_rule_steers_to_the_socket_are_named(lab: Lab) -> None:
    ranged_lab(lab)
    host = lab["host"]
    steering = steer(
        host, version=4, to_port=27000, daddr="198.51.100.1", dports=[(27000, 27009), (27020, 27099)]
    )
    steer(host, version=4, to_port=27001, daddr="198.51.100.1", dports=(27010, 27015))  # another socket
    steer(host, version=4, to_port=27000, daddr="198.51.100.2", dports=(27016, 27019))  # another address
    [finding] = problems(deployment(lab, V4))
    assert finding.check == "range tproxy rule"
    assert "to ports 27010-27019 (of 27000-27099@192.0.2.2)" in finding.detail
    assert (
        f"udp dport 27010-27019 meta mark set {steering.mark:#x} tproxy to :27000" in finding.fix
    )  # a mark it routes


@pytest.mark.privileged
def test_a_range_on_the_hosts_own_address_is_delivered_without_the_mark_routing(lab: Lab) -> None:
    # Verified: a tproxy'd datagram to an address of the host is delivered locally by the main routing;
    # the doctor asks the kernel instead of demanding pieces that change nothing.
    ranged_lab(lab)
    steer(lab["host"], version=4, to_port=27000, daddr="198.51.100.1", dports=(27000, 27099), rule=False)
    assert problems(deployment(lab, V4)) == []


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("left_out", "check", "command"),
    [
        ("rule", "range mark rule", "ip rule add fwmark {mark:#x} lookup {table}"),
        ("route", "range local route", "ip route add local 0.0.0.0/0 dev lo table {table}"),
    ],
)
def test_a_range_on_a_service_address_names_the_missing_mark_routing_and_the_fix_heals_it(
    lab: Lab, left_out: str, check: str, command: str
) -> None:
    ranged_lab(lab, "0.0.0.0:27000")
    steering = steer(
        lab["host"],
        version=4,
        to_port=27000,
        daddr="192.0.2.100",
        dports=(27000, 27099),
        **{left_out: False},  # type: ignore[arg-type]
    )
    [finding] = problems(deployment(lab, V4))
    assert (finding.check, finding.fix) == (
        check,
        f"netlab exec host -- {command.format(mark=steering.mark, table=steering.table)}",
    )
    assert "datagrams to 192.0.2.100 ports 27000-27099" in finding.detail
    apply_fix(lab, finding)
    assert problems(deployment(lab, V4)) == []


@pytest.mark.privileged
def test_a_rule_ahead_of_the_marks_rule_is_named_with_the_mark_rule_to_add_before_it(lab: Lab) -> None:
    ranged_lab(lab, "0.0.0.0:27000")
    steering = steer(lab["host"], version=4, to_port=27000, daddr="192.0.2.100", dports=(27000, 27099))
    assert problems(deployment(lab, V4)) == []
    lab["host"].check(
        ["ip", "rule", "add", "priority", "20", "fwmark", f"{steering.mark:#x}", "lookup", "main"]
    )
    [finding] = problems(deployment(lab, V4))
    assert finding.check == "range mark rule"
    assert "yet a rule ahead of it routes datagrams to 192.0.2.100 ports 27000-27099" in finding.detail
    assert (
        finding.fix
        == f"netlab exec host -- ip rule add priority 19 fwmark {steering.mark:#x} lookup {steering.table}"
    )
    apply_fix(lab, finding)
    assert problems(deployment(lab, V4)) == []


@pytest.mark.privileged
def test_a_range_with_neither_mark_rule_nor_local_route_names_both(lab: Lab) -> None:
    ranged_lab(lab, "0.0.0.0:27000")
    steering = steer(
        lab["host"],
        version=4,
        to_port=27000,
        daddr="192.0.2.100",
        dports=(27000, 27099),
        rule=False,
        route=False,
    )
    findings = problems(deployment(lab, V4))
    assert [(finding.check, finding.fix) for finding in findings] == [
        ("range mark rule", f"netlab exec host -- ip rule add fwmark {steering.mark:#x} lookup 100"),
        ("range local route", "netlab exec host -- ip route add local 0.0.0.0/0 dev lo table 100"),
    ]
    for finding in findings:
        apply_fix(lab, finding)
    assert problems(deployment(lab, V4)) == []


@pytest.mark.privileged
def test_an_ipv6_socket_of_a_range_without_the_ipv6_rule_is_named_as_the_twin(lab: Lab) -> None:
    lab.build(load_topology("dual-stack"))
    enable_reply_path(lab["host"], "192.0.2.2", "192.0.2.0/24", "198.51.100.1")
    start_forwarder(
        lab["host"],
        ["198.51.100.1:27000", "[2001:db8:51::1]:27000"],
        ["27000-27099@192.0.2.2", "27000-27099@[2001:db8:2::2]"],
    )
    steer(lab["host"], version=4, to_port=27000, daddr="198.51.100.1", dports=(27000, 27099))
    assert problems(deployment(lab, V4)) == []
    [finding] = problems(deployment(lab, V6))
    assert finding.check == "range tproxy rule IPv6"
    assert "ip6 daddr 2001:db8:51::1 meta l4proto udp udp dport 27000-27099" in finding.fix
    apply_fix(lab, finding)
    assert problems(deployment(lab, V6)) == []


def reply_lab(lab: Lab) -> None:
    """The dual-stack lab with a forwarder waiting in relay mode with its reply socket on :40000."""
    lab.build(load_topology("dual-stack"))
    start_forwarder(
        lab["host"],
        ["198.51.100.1:27000", "[2001:db8:51::1]:27000"],
        ["192.0.2.2:5353", "[2001:db8:2::2]:5353"],
        args=["--reply", "relay", "--reply-tproxy", "40000"],
    )


@pytest.mark.privileged
@pytest.mark.parametrize("family", [V4, V6], ids=["ipv4", "ipv6"])
def test_replies_steered_to_the_reply_socket_need_no_per_flow_relay_rule(
    lab: Lab, family: Mapping[str, object]
) -> None:
    reply_lab(lab)
    install_relay_tproxy(lab["host"], str(family["backend"]), 5353, 40000)
    assert problems(deployment(lab, family)) == []


@pytest.mark.privileged
def test_replies_with_no_steering_at_all_name_each_of_the_three_pieces_and_the_fixes_heal_it(
    lab: Lab,
) -> None:
    reply_lab(lab)
    findings = problems(deployment(lab, V4))  # no relay rule is asked for: the tproxy variant replaces it
    assert [finding.check for finding in findings] == [
        "reply tproxy rule",
        "reply mark rule",
        "reply local route",
    ]
    rule, mark, route = findings
    assert "192.0.2.2's UDP replies from port 5353 to the forwarder's reply socket :40000" in rule.detail
    assert rule.fix.endswith(
        "nft add rule ip transparent_udp_forwarder_replies prerouting ip saddr 192.0.2.2 meta l4proto udp "
        "udp sport 5353 "
        "meta mark set 0x1 tproxy to :40000 accept"
    )
    assert mark.fix == "netlab exec host -- ip rule add fwmark 0x1 lookup 100"
    assert route.fix == "netlab exec host -- ip route add local 0.0.0.0/0 dev lo table 100"
    for finding in findings:
        apply_fix(lab, finding)
    assert problems(deployment(lab, V4)) == []


@pytest.mark.privileged
def test_replies_without_their_tproxy_rule_reuse_the_mark_the_host_already_delivers(lab: Lab) -> None:
    reply_lab(lab)
    steering = steer(lab["host"], version=4, to_port=40000, saddr="192.0.2.2", sports=5353, nft=False)
    [finding] = problems(deployment(lab, V4))
    assert finding.check == "reply tproxy rule"
    assert f"udp sport 5353 meta mark set {steering.mark:#x} tproxy to :40000" in finding.fix
    apply_fix(lab, finding)
    assert problems(deployment(lab, V4)) == []


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("family", "left_out", "check", "command"),
    [
        (V4, "rule", "reply mark rule", "ip rule add fwmark {mark:#x} lookup {table}"),
        (V4, "route", "reply local route", "ip route add local 0.0.0.0/0 dev lo table {table}"),
        (V6, "rule", "reply mark rule IPv6", "ip -6 rule add fwmark {mark:#x} lookup {table}"),
        (V6, "route", "reply local route IPv6", "ip -6 route add local ::/0 dev lo table {table}"),
    ],
)
def test_replies_without_their_mark_routing_name_the_missing_piece_and_the_fix_heals_it(
    lab: Lab, family: Mapping[str, object], left_out: str, check: str, command: str
) -> None:
    reply_lab(lab)
    version = 4 if family is V4 else 6
    steering = steer(
        lab["host"],
        version=version,
        to_port=40000,
        saddr=str(family["backend"]),
        sports=5353,
        **{left_out: False},  # type: ignore[arg-type]
    )
    [finding] = problems(deployment(lab, family))
    assert (finding.check, finding.fix) == (
        check,
        f"netlab exec host -- {command.format(mark=steering.mark, table=steering.table)}",
    )
    apply_fix(lab, finding)
    assert problems(deployment(lab, family)) == []


@pytest.mark.privileged
def test_replies_steered_to_another_port_than_the_reply_socket_are_named(lab: Lab) -> None:
    reply_lab(lab)
    install_relay_tproxy(lab["host"], "192.0.2.2", 5353, 40001)
    install_relay_tproxy(lab["host"], "192.0.2.2", 5354, 40000)  # another port of the backend
    [finding] = problems(deployment(lab, V4))
    assert finding.check == "reply tproxy rule"
    assert "from port 5353 to the forwarder's reply socket :40000" in finding.detail


@pytest.mark.privileged
def test_the_shipped_port_range_ruleset_satisfies_the_doctor_for_its_dual_stack_unit(lab: Lab) -> None:
    # fixtures/tproxy/port-range.nft (an inet table, `tproxy ip to` and `tproxy ip6 to`) with the unit's one
    # dual-stack socket ([::]:PORT as ListenDatagram=PORT binds it): both families are steered.
    lab.build(load_topology("dual-stack"))
    enable_reply_path(lab["host"], "192.0.2.2", "192.0.2.0/24", "198.51.100.1")
    apply_ruleset(lab["host"], (fixtures_dir() / "tproxy" / "port-range.nft").read_text(), label="shipped")
    start_forwarder(lab["host"], ["[::]:27000"], ["27000-27050@192.0.2.2"])
    assert problems(deployment(lab, V4)) == []
    assert problems(deployment(lab, V6)) == []


@pytest.mark.privileged
def test_a_range_wider_than_the_shipped_ruleset_names_the_ports_beyond_it(lab: Lab) -> None:
    lab.build(load_topology("dual-stack"))
    enable_reply_path(lab["host"], "192.0.2.2", "192.0.2.0/24", "198.51.100.1")
    apply_ruleset(lab["host"], (fixtures_dir() / "tproxy" / "port-range.nft").read_text(), label="shipped")
    start_forwarder(lab["host"], ["[::]:27000"], ["27000-27099@192.0.2.2"])
    [v4] = problems(deployment(lab, V4))
    [v6] = problems(deployment(lab, V6))
    assert (v4.check, v6.check) == ("range tproxy rule", "range tproxy rule IPv6")
    assert "to ports 27051-27099 (of 27000-27099@192.0.2.2) to :27000" in v4.detail
    assert "udp dport 27051-27099 meta mark set 0x1 tproxy to :27000" in v6.fix  # the mark it routes


UNMARKED = """
table ip unmarked {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        ip daddr { 192.0.2.100, 198.51.100.1 } udp dport 27000-27099 tproxy to :27000 accept
    }
}
"""


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("listen", "named"), [("0.0.0.0:27000", ["range mark rule"]), ("198.51.100.1:27000", [])]
)
def test_a_tproxy_rule_that_sets_no_mark_is_named_unless_its_address_is_the_hosts_own(
    lab: Lab, listen: str, named: list[str]
) -> None:
    # Without a mark no policy rule can pick the datagram out: to the service address it is forwarded,
    # to the host's own address it is delivered anyway.
    ranged_lab(lab, listen)
    apply_ruleset(lab["host"], UNMARKED, label="unmarked")
    steer(lab["host"], version=4, to_port=1, dports=1)  # mark routing exists, for another mark
    findings = problems(deployment(lab, V4))
    assert [finding.check for finding in findings] == named
    if findings:
        assert "sets no mark" in findings[0].detail
        assert findings[0].fix.startswith("add `meta mark set 0x")
