"""Each shipped topology builds into namespaces with its addresses, routes, MTU and sysctls, and a
datagram crosses the host in each family it has."""

import pytest
from pyroute2 import IPRoute

from netlab import Lab
from netlab.fixtures import load_topology
from netlab.topology.file import topology_from_dict
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
