"""Relay routing (netlab.service.relay), without the forwarder: the host's policy rule delivers only the
backend's replies to an unconnected transparent socket bound to the client's address, as the forwarder's
per-flow socket is in `--reply relay`; everything else the backend sends is still routed to the client.

    client 198.51.100.10      --- 198.51.100.1   [host] 192.0.2.1     --- 192.0.2.2     backend
           2001:db8:51::10    --- 2001:db8:51::1        2001:db8:2::1 --- 2001:db8:2::2
    (fixtures/topologies/dual-stack.toml; the backend "replies" from port 27000 to the client's 4242)
"""

import contextlib
import socket

import pytest
from pyroute2 import IPRoute

from forwarder.core.addresses import decode_sockaddr
from forwarder.io.control import origdst_local
from netlab import AddressError, Lab, load_topology
from netlab.lab.node import LabNode
from netlab.lab.tproxy import transparent_socket
from netlab.service.relay import (
    RELAY_PRIORITY,
    RELAY_TABLE,
    RelayRouting,
    flow_socket,
    install_local_relay_routing,
    install_relay_route,
    install_relay_routing,
    install_relay_tproxy,
    is_relayed,
    local_backend_commands,
    port_ranges,
    relay_commands,
    relay_tproxy_commands,
    route_backend_errors,
    route_for_packet,
)
from netlab.traffic.expect import expect

FAMILIES = {
    "ipv4": {"client": "198.51.100.10", "backend": "192.0.2.2", "loopback": "127.0.0.1"},
    "ipv6": {"client": "2001:db8:51::10", "backend": "2001:db8:2::2", "loopback": "::1"},
}
PORT, CLIENT_PORT = 27000, 4242


def test_relay_commands_spell_one_rule_per_port_range_and_the_local_route() -> None:
    assert relay_commands("192.0.2.2", [27000, (27010, 27020)]) == [
        "ip rule add from 192.0.2.2 ipproto udp sport 27000 lookup 100",
        "ip rule add from 192.0.2.2 ipproto udp sport 27010-27020 lookup 100",
        "ip route add local 0.0.0.0/0 dev lo table 100",
    ]
    assert relay_commands("2001:db8:2::2", 53, table=7) == [
        "ip -6 rule add from 2001:db8:2::2 ipproto udp sport 53 lookup 7",
        "ip -6 route add local ::/0 dev lo table 7",
    ]


def test_a_backend_on_the_host_itself_gets_go_mmproxys_loopback_rule() -> None:
    assert local_backend_commands(4) == [
        "ip rule add from 127.0.0.0/8 iif lo lookup 100",
        "ip route add local 0.0.0.0/0 dev lo table 100",
    ]
    assert local_backend_commands(6)[0] == "ip -6 rule add from ::1/128 iif lo lookup 100"


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        (0, r"relay port 0: expected a port"),
        ((27010, 27000), r"relay port range \(27010, 27000\): the first port is above the last"),
        ([], r"at least one backend port"),
        ([True], r"relay port True"),
    ],
)
def test_bad_relay_ports_are_refused_naming_the_value(ports: object, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        port_ranges(ports)  # type: ignore[arg-type]


def test_a_bad_backend_is_refused_naming_it() -> None:
    with pytest.raises(AddressError, match=r"relay backend 'backend': expected an address or a network"):
        relay_commands("backend", 53)


def backend_sends(lab: Lab, family: str, sport: int, payload: bytes) -> None:
    """The backend sends `payload` from its address:sport to the client's address:4242."""
    addresses = FAMILIES[family]
    sock = lab["backend"].udp_socket(addresses["backend"], sport)
    sock.sendto(payload, (addresses["client"], CLIENT_PORT))
    sock.close()


def receives(sock: socket.socket, timeout: float = 3.0) -> tuple[bytes, str] | None:
    """What `sock` receives within `timeout` (payload, source address), or None."""
    sock.settimeout(timeout)
    try:
        data, peer = sock.recvfrom(65535)
    except TimeoutError:
        return None
    return data, peer[0]


def host_iif(node: LabNode) -> int:
    from pyroute2 import IPRoute

    with IPRoute(netns=node.namespace) as ipr:
        return int(ipr.link_lookup(ifname="to-backend")[0])


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_with_relay_routing_the_hosts_transparent_socket_receives_the_backends_reply(
    lab: Lab, family: str
) -> None:
    lab.build(load_topology("dual-stack"))
    addresses = FAMILIES[family]
    client = expect(lab["client"], port=CLIENT_PORT)
    flow = flow_socket(lab["host"], addresses["client"], CLIENT_PORT)
    install_relay_routing(lab["host"], addresses["backend"], PORT)

    backend_sends(lab, family, PORT, b"reply")

    assert receives(flow) == (b"reply", addresses["backend"])
    client.nothing(quiet=0.5)


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_without_relay_routing_the_backends_reply_passes_the_host_to_the_client(
    lab: Lab, family: str
) -> None:
    lab.build(load_topology("dual-stack"))
    addresses = FAMILIES[family]
    client = expect(lab["client"], port=CLIENT_PORT)
    flow = flow_socket(lab["host"], addresses["client"], CLIENT_PORT)

    backend_sends(lab, family, PORT, b"reply")

    client.datagram(src=addresses["backend"], payload=b"reply").arrives(within=3).and_nothing_else()
    assert receives(flow, timeout=0.3) is None


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_relay_routing_leaves_the_backends_udp_from_other_ports_routed_to_the_client(
    lab: Lab, family: str
) -> None:
    lab.build(load_topology("dual-stack"))
    addresses = FAMILIES[family]
    client = expect(lab["client"], port=CLIENT_PORT)
    flow = flow_socket(lab["host"], addresses["client"], CLIENT_PORT)
    install_relay_routing(lab["host"], addresses["backend"], [PORT, (27010, 27020)])

    backend_sends(lab, family, 27001, b"own lookup")
    backend_sends(lab, family, 27021, b"own update")

    client.datagram(payload=b"own lookup").arrives(within=3)
    client.datagram(payload=b"own update").arrives(within=3).and_nothing_else()
    assert receives(flow, timeout=0.3) is None


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_relay_routing_leaves_the_backends_tcp_from_the_relayed_port_routed_to_the_client(
    lab: Lab, family: str
) -> None:
    lab.build(load_topology("dual-stack"))
    addresses = FAMILIES[family]
    kind = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    listener = lab["client"].open_socket(kind, socket.SOCK_STREAM)
    listener.bind((addresses["client"], CLIENT_PORT))
    listener.listen(1)
    install_relay_routing(lab["host"], addresses["backend"], PORT)

    connection = lab["backend"].open_socket(kind, socket.SOCK_STREAM)
    connection.bind((addresses["backend"], PORT))  # the very source port the rule relays for UDP
    connection.settimeout(5)
    connection.connect((addresses["client"], CLIENT_PORT))
    connection.sendall(b"tcp")
    listener.settimeout(5)
    accepted, peer = listener.accept()
    lab.defer(accepted.close)
    assert peer[:2] == (addresses["backend"], PORT)
    assert accepted.recv(16) == b"tcp"


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_the_kernel_answers_local_for_a_relayed_reply_and_unicast_for_the_rest(lab: Lab, family: str) -> None:
    lab.build(load_topology("dual-stack"))
    addresses, host = FAMILIES[family], lab["host"]
    iif = host_iif(host)
    relayed = (host.namespace, addresses["backend"], addresses["client"], PORT)
    assert not is_relayed(*relayed, iif=iif)

    install_relay_routing(host, addresses["backend"], PORT, table=123)

    assert is_relayed(*relayed, iif=iif)
    answer = route_for_packet(host.namespace, addresses["backend"], addresses["client"], PORT, 4242, iif=iif)
    assert answer is not None
    assert answer.table == 123
    assert not is_relayed(host.namespace, addresses["backend"], addresses["client"], PORT + 1, iif=iif)
    tcp = route_for_packet(host.namespace, addresses["backend"], addresses["client"], PORT, 4242, 6, iif)
    assert tcp is not None
    assert tcp.type == "unicast"


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_removing_the_relay_routing_sends_the_reply_to_the_client_again(lab: Lab, family: str) -> None:
    lab.build(load_topology("dual-stack"))
    addresses = FAMILIES[family]
    client = expect(lab["client"], port=CLIENT_PORT)
    flow = flow_socket(lab["host"], addresses["client"], CLIENT_PORT)
    routing = install_relay_routing(lab["host"], addresses["backend"], PORT)

    routing.remove()
    backend_sends(lab, family, PORT, b"after")

    client.datagram(payload=b"after").arrives(within=3).and_nothing_else()
    assert receives(flow, timeout=0.3) is None
    host = lab["host"]
    assert not is_relayed(host.namespace, addresses["backend"], addresses["client"], PORT, iif=host_iif(host))


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_a_backend_on_the_host_itself_reaches_the_flow_socket_with_the_loopback_rule(
    lab: Lab, family: str
) -> None:
    lab.build(load_topology("dual-stack"))
    addresses, host = FAMILIES[family], lab["host"]
    flow = flow_socket(host, addresses["client"], CLIENT_PORT)
    backend = host.udp_socket(addresses["loopback"], 5353)  # `--net=host`: the backend on the host
    # IPv4 refuses a loopback source on a route off the host at once (EINVAL); IPv6 drops it.
    with contextlib.suppress(OSError):
        backend.sendto(b"too early", (addresses["client"], CLIENT_PORT))
    assert receives(flow, timeout=0.3) is None

    install_local_relay_routing(host)
    backend.sendto(b"local reply", (addresses["client"], CLIENT_PORT))

    assert receives(flow) == (b"local reply", addresses["loopback"])


def relay_state(node: LabNode) -> list[object]:
    """The policy rules and routes of the relay table (both families) in `node`."""
    with IPRoute(netns=node.namespace) as ipr:
        rules = [
            (rule["family"], rule.get_attr("FRA_SRC"), rule.get_attr("FRA_FWMARK"))
            for family in (socket.AF_INET, socket.AF_INET6)
            for rule in ipr.get_rules(family=family)
            if rule.get_attr("FRA_TABLE") == RELAY_TABLE
        ]
        routes = [
            (route["family"], route["type"])
            for family in (socket.AF_INET, socket.AF_INET6)
            for route in ipr.get_routes(family=family, table=RELAY_TABLE)
        ]
    return [*rules, *routes]


@pytest.mark.privileged
def test_every_way_of_installing_relay_routing_returns_one_record_that_removes_what_it_added(
    lab: Lab,
) -> None:
    lab.build(load_topology("dual-stack"))
    host = lab["host"]
    routings = [
        install_relay_routing(host, "192.0.2.2", PORT),
        install_relay_routing(host, "2001:db8:2::2", [PORT, (27010, 27020)]),
        install_local_relay_routing(host),
        install_relay_route(host, "192.0.2.2", 5353),
        # The kernel deletes the first rule matching the selectors given: a rule with fewer selectors than
        # another at the same priority would take that one along; a priority of its own keeps them apart.
        install_relay_route(host, "2001:db8:2::2", udp_only=False, priority=RELAY_PRIORITY + 1),
        route_backend_errors(host, ["192.0.2.2", "2001:db8:2::2"]),
    ]
    assert all(type(routing) is RelayRouting for routing in routings)
    assert all(routing.commands and routing.rules for routing in routings)
    assert len(relay_state(host)) == sum(len(r.rules) for r in routings) + 2  # + one local route a family

    for routing in reversed(routings):
        routing.remove()

    assert relay_state(host) == []
    routings[0].remove()  # twice is harmless (the lab's cleanup calls it again)


REPLY_PORT = 40000


def reply_socket_receives(
    sock: socket.socket, timeout: float = 3.0
) -> tuple[bytes, str, tuple[str, int]] | None:
    """What the one reply socket receives within `timeout`: payload, source address, and the original
    destination (the client the backend answered), or None."""
    sock.settimeout(timeout)
    try:
        data, ancillary, flags, peer = sock.recvmsg(65535, socket.CMSG_SPACE(28))
    except TimeoutError:
        return None
    raw = origdst_local(ancillary, flags)
    assert raw, f"no original destination on {data!r}"
    host, port = decode_sockaddr(raw)[:2]
    return data, peer[0], (host, port)


def test_the_tproxy_variants_commands_steer_the_backends_ports_to_the_reply_socket_in_both_families() -> None:
    assert relay_tproxy_commands("192.0.2.2", [PORT, (27010, 27020)], REPLY_PORT) == [
        "nft add table ip transparent_udp_forwarder_replies",
        "nft 'add chain ip transparent_udp_forwarder_replies prerouting "
        "{ type filter hook prerouting priority mangle; "
        "policy accept; }'",
        "nft add rule ip transparent_udp_forwarder_replies prerouting ip saddr 192.0.2.2 meta l4proto udp "
        "udp sport { 27000, 27010-27020 } meta mark set 0x1 tproxy to :40000 accept",
        "ip rule add fwmark 0x1 lookup 100",
        "ip route add local 0.0.0.0/0 dev lo table 100",
    ]
    assert (
        relay_tproxy_commands("2001:db8:2::2", PORT, REPLY_PORT)[-1]
        == "ip -6 route add local ::/0 dev lo table 100"
    )
    with pytest.raises(AddressError, match="relay port 0"):
        relay_tproxy_commands("192.0.2.2", 0, REPLY_PORT)


@pytest.mark.privileged
def test_the_tproxy_variants_commands_pasted_into_a_shell_work(lab: Lab) -> None:
    # What the README's recipe says an operator types: `tproxy` is an nft keyword, so the table has
    # another name; each line runs as it is written.
    import shlex

    lab.build(load_topology("dual-stack"))
    for version, backend in ((4, "192.0.2.2"), (6, "2001:db8:2::2")):
        for command in relay_tproxy_commands(backend, PORT, REPLY_PORT):
            lab["host"].check(shlex.split(command))
        assert is_relayed_marked(lab, version)


def is_relayed_marked(lab: Lab, version: int) -> bool:
    family = "ipv4" if version == 4 else "ipv6"
    addresses = FAMILIES[family]
    host = lab["host"]
    answer = route_for_packet(
        host.namespace,
        addresses["backend"],
        addresses["client"],
        PORT,
        CLIENT_PORT,
        iif=host_iif(host),
        mark=1,
    )
    return answer is not None and answer.type == "local"


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_with_the_tproxy_variant_the_one_reply_socket_reads_every_reply_with_its_client(
    lab: Lab, family: str
) -> None:
    lab.build(load_topology("dual-stack"))
    addresses = FAMILIES[family]
    version = 4 if family == "ipv4" else 6
    client = expect(lab["client"], port=CLIENT_PORT)
    reply_socket = transparent_socket(lab["host"], version, REPLY_PORT)
    steering = install_relay_tproxy(lab["host"], addresses["backend"], [PORT, (27010, 27020)], REPLY_PORT)
    assert steering.commands[2].endswith(
        f"udp sport {{ 27000, 27010-27020 }} meta mark set {steering.mark:#x} tproxy to :{REPLY_PORT} accept"
    )

    backend_sends(lab, family, PORT, b"reply")
    backend_sends(lab, family, 27015, b"reply from the range")
    backend_sends(lab, family, 27001, b"own lookup")  # not a port it answers from: routed as before

    assert reply_socket_receives(reply_socket) == (
        b"reply",
        addresses["backend"],
        (addresses["client"], CLIENT_PORT),
    )
    assert reply_socket_receives(reply_socket) == (
        b"reply from the range",
        addresses["backend"],
        (addresses["client"], CLIENT_PORT),
    )
    client.datagram(payload=b"own lookup").arrives(within=3).and_nothing_else()
    assert reply_socket_receives(reply_socket, timeout=0.3) is None


@pytest.mark.privileged
@pytest.mark.parametrize("family", FAMILIES)
def test_removing_the_tproxy_variant_sends_the_reply_to_the_client_again(lab: Lab, family: str) -> None:
    lab.build(load_topology("dual-stack"))
    addresses = FAMILIES[family]
    version = 4 if family == "ipv4" else 6
    client = expect(lab["client"], port=CLIENT_PORT)
    reply_socket = transparent_socket(lab["host"], version, REPLY_PORT)
    steering = install_relay_tproxy(lab["host"], addresses["backend"], PORT, REPLY_PORT)

    steering.remove()
    steering.remove()  # twice: nothing left to remove is no error
    backend_sends(lab, family, PORT, b"after")

    client.datagram(payload=b"after").arrives(within=3).and_nothing_else()
    assert reply_socket_receives(reply_socket, timeout=0.3) is None
    assert "netlab_tproxy_" not in lab["host"].check(["nft", "list", "ruleset"])


@pytest.mark.privileged
@pytest.mark.parametrize(("interface", "steered"), [(None, True), ("to-backend", False)])
def test_the_tproxy_variant_on_the_backends_interface_does_not_steer_a_reply_spoofed_from_the_clients_side(
    lab: Lab, interface: str | None, steered: bool
) -> None:
    lab.build(load_topology("dual-stack"))
    reply_socket = transparent_socket(lab["host"], 4, REPLY_PORT)
    steering = install_relay_tproxy(lab["host"], "192.0.2.2", PORT, REPLY_PORT, interface=interface)
    assert ('iifname "to-backend"' in steering.commands[2]) is not steered

    lab["client"].send_fast(
        src="192.0.2.2", sport=PORT, dst="203.0.113.9", dport=CLIENT_PORT, payloads=[b"spoof"]
    )
    backend_sends(lab, "ipv4", PORT, b"reply")

    if steered:
        assert reply_socket_receives(reply_socket) == (b"spoof", "192.0.2.2", ("203.0.113.9", CLIENT_PORT))
    assert reply_socket_receives(reply_socket) == (b"reply", "192.0.2.2", ("198.51.100.10", CLIENT_PORT))
    assert reply_socket_receives(reply_socket, timeout=0.3) is None
