"""Each shipped topology builds into namespaces with its addresses, routes, MTU and sysctls, and a
datagram crosses the host in each family it has; a node's declared tproxy steering is installed."""

import socket
import tomllib

import pytest
from pyroute2 import IPRoute

from forwarder.core.addresses import decode_sockaddr
from forwarder.io.control import origdst_local
from netlab import Lab
from netlab.fixtures import load_topology, topology_path
from netlab.lab.tproxy import transparent_socket
from netlab.topology.file import topology_from_dict
from netlab.topology.model import Topology
from netlab.traffic.expect import expect

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("name", ["seed", "seed-ipv6", "dual-stack", "docker-bridge"])
def test_a_shipped_topology_builds_with_its_addresses_routes_and_sysctls(lab: Lab, name: str) -> None:
    topology = load_topology(name)
    lab.build(topology)
    for node in topology.nodes.values():
        with IPRoute(netns=lab[node.name].namespace) as ipr:
            configured = {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr() if a["scope"] == 0}
            gateways = {str(r.get_attr("RTA_GATEWAY")) for r in ipr.get_routes() if r.get_attr("RTA_GATEWAY")}
        assert configured == set(topology.addresses_of(node.name))
        assert gateways == {route.via for route in topology.routes if route.node == node.name}
        for key, value in node.sysctls.items():
            assert lab[node.name].sysctl(key) == value


@pytest.mark.parametrize(("name", "backend"), [("seed", "192.0.2.2"), ("seed-ipv6", "2001:db8:2::2")])
def test_the_client_reaches_the_backend_through_the_host(lab: Lab, name: str, backend: str) -> None:
    lab.build(load_topology(name))
    inbox = expect(lab["backend"], port=9000)
    lab["client"].send_fast(dst=backend, dport=9000, payloads=[b"routed"])
    client = load_topology(name).addresses_of("client")[0]
    inbox.datagram(src=client, payload=b"routed").arrives(within=5).and_nothing_else()


def test_a_link_gets_its_mtu_on_both_ends(lab: Lab) -> None:
    lab.build(
        topology_from_dict(
            {
                "nodes": {"left": {}, "right": {}},
                "links": [{"a": {"node": "left"}, "b": {"node": "right", "ifname": "eth0"}, "mtu": 1280}],
            },
            source="inline",
        )
    )
    for node, ifname in (("left", "to-right"), ("right", "eth0")):
        with IPRoute(netns=lab[node].namespace) as ipr:
            (link,) = ipr.get_links(ifname=ifname)
            assert link.get_attr("IFLA_MTU") == 1280


def steered_seed(*steerings: dict[str, object]) -> Topology:
    """The seed topology with these `[[nodes.host.tproxy]]` tables."""
    data = tomllib.loads(topology_path("seed").read_text())
    data["nodes"]["host"]["tproxy"] = list(steerings)
    return topology_from_dict(data, source="steered seed")


def test_a_declared_steering_is_installed_so_each_port_of_the_range_reaches_one_socket(lab: Lab) -> None:
    lab.build(
        steered_seed({"version": 4, "to_port": 27000, "dports": "27000-27099", "daddr": "198.51.100.1"})
    )
    sock = transparent_socket(lab["host"], 4, 27000)
    sender = lab["client"].udp_socket("198.51.100.10", 40001)
    for port in (27042, 27100):
        sender.sendto(str(port).encode(), ("198.51.100.1", port))
    sock.settimeout(3)
    data, ancillary, flags, _ = sock.recvmsg(100, socket.CMSG_SPACE(28))
    raw = origdst_local(ancillary, flags)
    assert raw
    assert (data, decode_sockaddr(raw)[:2]) == (b"27042", ("198.51.100.1", 27042))
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):  # 27100 is outside the range: never steered
        sock.recvmsg(100, socket.CMSG_SPACE(28))


def test_a_declared_steering_leaves_out_the_pieces_switched_off(lab: Lab) -> None:
    lab.build(
        steered_seed(
            {"version": 4, "to_port": 27000, "dports": 27000, "nft": False},
            {"version": 6, "to_port": 40000, "sports": 5353, "rule": False, "route": False},
        )
    )
    host = lab["host"]
    ruleset = host.check(["nft", "list", "ruleset"])
    assert "table ip netlab_tproxy_" not in ruleset  # nft = false
    assert "table ip6 netlab_tproxy_" in ruleset
    with IPRoute(netns=host.namespace) as ipr:
        v4_marks = [rule.get_attr("FRA_FWMARK") for rule in ipr.get_rules(family=socket.AF_INET)]
        v6_marks = [rule.get_attr("FRA_FWMARK") for rule in ipr.get_rules(family=socket.AF_INET6)]
        v6_local = [r for r in ipr.get_routes(family=socket.AF_INET6) if r["type"] == 2 and r["dst_len"] == 0]
    assert [mark for mark in v4_marks if mark] != []
    assert [mark for mark in v6_marks if mark] == []  # rule = false
    assert v6_local == []  # route = false
