"""netlab.lab.tproxy: steering a port range (or a backend's replies) into one transparent socket with an
nft tproxy rule and the mark routing; what each piece does, what is missing without it, and removal."""

import socket

import pytest
from pyroute2 import IPRoute

from forwarder.core.addresses import decode_sockaddr
from forwarder.io.control import origdst_local
from netlab import Lab
from netlab.errors import AddressError
from netlab.lab.tproxy import steer, tproxy_commands, tproxy_rule, transparent_socket
from netlab.topology.shipped import dual_stack, seed_deployment

CONTROL = socket.CMSG_SPACE(28)


def _received(sock: socket.socket, timeout: float = 1.0) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram that reaches `sock` within `timeout` of the last one, with its original destination."""
    sock.settimeout(timeout)
    got: list[tuple[bytes, tuple[str, int]]] = []
    while True:
        try:
            data, ancillary, flags, _ = sock.recvmsg(2048, CONTROL)
        except TimeoutError:
            return got
        raw = origdst_local(ancillary, flags)
        assert raw, f"no original destination on {data!r}"
        host, port = decode_sockaddr(raw)[:2]
        got.append((data, (host, port)))


def test_the_rule_matches_udp_by_the_selectors_given_and_marks_it() -> None:
    rule = tproxy_rule(4, 27000, mark=1, daddr="198.51.100.1", dports=(27000, 27099))
    assert rule == (
        "ip daddr 198.51.100.1 meta l4proto udp udp dport 27000-27099 "
        "meta mark set 0x1 tproxy to :27000 accept"
    )
    rule6 = tproxy_rule(6, 5999, mark=2, saddr="2001:db8:2::2", sports=[53, (5353, 5354)])
    assert rule6.startswith("ip6 saddr 2001:db8:2::2 meta l4proto udp udp sport { 53, 5353-5354 }")


def test_exclude_local_puts_the_fib_clause_after_the_selectors_and_before_the_mark() -> None:
    # The README's recipes spell it so: the rule matches, then spares the host's own addresses, then marks.
    rule = tproxy_rule(4, 5399, saddr="192.0.2.2", sports=5353, iifname="eth1", exclude_local=True)
    assert rule == (
        'iifname "eth1" ip saddr 192.0.2.2 meta l4proto udp udp sport 5353 '
        "fib daddr type != local meta mark set 0x1 tproxy to :5399 accept"
    )
    assert "fib" not in tproxy_rule(4, 5399, saddr="192.0.2.2", sports=5353)
    commands = tproxy_commands(6, 5399, saddr="::1", sports=5353, iifname="lo", exclude_local=True)
    assert "udp sport 5353 fib daddr type != local meta mark set 0x1" in commands[2]


@pytest.mark.parametrize(
    ("selectors", "named"),
    [
        ({"dports": (20, 10)}, "the first port is above the last"),
        ({"dports": 70000}, "expected a port"),
        ({"daddr": "2001:db8::1"}, "expected an IPv4 address"),
        ({"saddr": "nonsense"}, "expected an address or a network"),
    ],
)
def test_a_bad_selector_is_refused_naming_it(selectors: dict[str, object], named: str) -> None:
    with pytest.raises(AddressError, match=named):
        tproxy_rule(4, 27000, **selectors)  # type: ignore[arg-type]


def test_the_operators_commands_spell_the_three_pieces() -> None:
    commands = tproxy_commands(6, 27000, mark=1, table=100, dports=(27000, 27050))
    assert commands[-2:] == [
        "ip -6 rule add fwmark 0x1 lookup 100",
        "ip -6 route add local ::/0 dev lo table 100",
    ]
    assert "tproxy to :27000" in commands[2]


@pytest.mark.privileged
def test_a_port_range_reaches_one_socket_with_each_original_destination(lab: Lab) -> None:
    lab.build(seed_deployment())
    host, client = lab["host"], lab["client"]
    sock = transparent_socket(host, 4, 27000)
    steer(host, version=4, to_port=27000, daddr="198.51.100.1", dports=(27000, 27099))

    sender = client.udp_socket("198.51.100.10", 40001)
    for port in (27042, 27099, 27100, 27000):
        sender.sendto(str(port).encode(), ("198.51.100.1", port))

    assert _received(sock) == [
        (b"27042", ("198.51.100.1", 27042)),
        (b"27099", ("198.51.100.1", 27099)),
        (b"27000", ("198.51.100.1", 27000)),
    ]


@pytest.mark.privileged
def test_ipv6_and_a_dual_stack_socket_get_their_original_destinations(lab: Lab) -> None:
    lab.build(dual_stack())
    host, client = lab["host"], lab["client"]
    sock = transparent_socket(host, 6, 27000, dual_stack=True)
    steer(host, version=4, to_port=27000, dports=(27010, 27020))
    steer(host, version=6, to_port=27000, dports=(27010, 27020))
    v4 = client.udp_socket("198.51.100.10", 40002)
    v6 = client.udp_socket("2001:db8:51::10", 40003)
    v4.sendto(b"four", ("198.51.100.1", 27011))
    v6.sendto(b"six", ("2001:db8:51::1", 27012))

    got = dict(_received(sock))
    assert got == {b"four": ("198.51.100.1", 27011), b"six": ("2001:db8:51::1", 27012)}


@pytest.mark.privileged
@pytest.mark.parametrize("missing", ["nft", "rule", "route"])
def test_to_an_address_not_the_hosts_without_any_one_piece_nothing_reaches_the_socket(
    lab: Lab, missing: str
) -> None:
    # A reply to a client (the reply socket's case): the destination is not the host's, so without the
    # mark routing the host forwards it, and without the nft rule nothing assigns it to the socket.
    lab.build(seed_deployment())
    host, client = lab["host"], lab["client"]
    sock = transparent_socket(host, 4, 27000)
    steer(host, version=4, to_port=27000, daddr="192.0.2.2", dports=27042, **{missing: False})  # type: ignore[arg-type]
    sender = client.udp_socket("198.51.100.10", 40004)

    sender.sendto(b"lost", ("192.0.2.2", 27042))

    assert _received(sock, timeout=0.5) == []


@pytest.mark.privileged
def test_to_an_address_not_the_hosts_the_whole_steering_delivers(lab: Lab) -> None:
    lab.build(seed_deployment())
    host, client = lab["host"], lab["client"]
    sock = transparent_socket(host, 4, 27000)
    steer(host, version=4, to_port=27000, daddr="192.0.2.2", dports=27042)

    client.udp_socket("198.51.100.10", 40005).sendto(b"caught", ("192.0.2.2", 27042))

    assert _received(sock) == [(b"caught", ("192.0.2.2", 27042))]


@pytest.mark.privileged
@pytest.mark.parametrize("missing", ["rule", "route"])
def test_to_the_hosts_own_address_the_nft_rule_alone_delivers(lab: Lab, missing: str) -> None:
    # A port range on the host's own address is delivered locally by the main table already.
    lab.build(seed_deployment())
    host, client = lab["host"], lab["client"]
    sock = transparent_socket(host, 4, 27000)
    steer(host, version=4, to_port=27000, dports=(27001, 27099), **{missing: False})  # type: ignore[arg-type]

    client.udp_socket("198.51.100.10", 40006).sendto(b"local", ("198.51.100.1", 27042))

    assert _received(sock) == [(b"local", ("198.51.100.1", 27042))]


@pytest.mark.privileged
def test_to_the_hosts_own_address_nothing_arrives_without_the_nft_rule(lab: Lab) -> None:
    lab.build(seed_deployment())
    host, client = lab["host"], lab["client"]
    sock = transparent_socket(host, 4, 27000)
    steer(host, version=4, to_port=27000, dports=(27001, 27099), nft=False)

    client.udp_socket("198.51.100.10", 40007).sendto(b"lost", ("198.51.100.1", 27042))

    assert _received(sock, timeout=0.5) == []


@pytest.mark.privileged
@pytest.mark.parametrize(("exclude_local", "stolen"), [(True, []), (False, [b"to the host"])])
def test_exclude_local_spares_datagrams_to_the_hosts_own_addresses_and_steers_the_rest(
    lab: Lab, exclude_local: bool, stolen: list[bytes]
) -> None:
    # tproxy takes a datagram meant for an unconnected socket of the host too (here one on 27042 of the
    # host's own address): without the clause it is stolen by the steered socket, with it delivered there.
    lab.build(seed_deployment())
    host, client = lab["host"], lab["client"]
    sock = transparent_socket(host, 4, 27000)
    own = host.udp_socket("198.51.100.1", 27042)
    own.settimeout(0.5)
    steer(host, version=4, to_port=27000, dports=27042, exclude_local=exclude_local)

    sender = client.udp_socket("198.51.100.10", 40008)
    sender.sendto(b"to the host", ("198.51.100.1", 27042))
    sender.sendto(b"elsewhere", ("192.0.2.2", 27042))

    assert _received(sock) == [(payload, ("198.51.100.1", 27042)) for payload in stolen] + [
        (b"elsewhere", ("192.0.2.2", 27042))
    ]
    if not stolen:
        assert own.recvfrom(100)[0] == b"to the host"


@pytest.mark.privileged
def test_removal_takes_out_the_table_the_rule_and_the_route_and_may_run_twice(lab: Lab) -> None:
    lab.build(seed_deployment())
    host = lab["host"]
    steering = steer(host, version=4, to_port=27000, dports=27001)

    steering.remove()
    steering.remove()

    with IPRoute(netns=host.namespace) as ipr:
        assert not [
            r for r in ipr.get_rules(family=socket.AF_INET) if r.get_attr("FRA_TABLE") == steering.table
        ]
        assert not ipr.get_routes(family=socket.AF_INET, table=steering.table)
    assert steering.nft_table not in host.check(["nft", "list", "tables"])
