"""`netlab doctor --lab` derives what to check from the topology: `[roles]` in the file, or by node name."""

import pytest

from netlab import Lab, load_topology, topology_from_dict
from netlab.doctor.lab import deployments_of, roles_of
from netlab.errors import TopologyError


def test_shipped_topologies_name_their_roles() -> None:
    roles = roles_of(load_topology("seed"))
    assert (roles.host, roles.backend, roles.clients, roles.spoofed) == (
        "host", "backend", ["client"], ["203.0.113.0/24"],
    )  # fmt: skip


def test_without_roles_the_nodes_named_host_and_backend_play_them() -> None:
    topology = load_topology("seed")
    topology.roles = None
    roles = roles_of(topology)
    assert (roles.host, roles.backend, roles.clients) == ("host", "backend", ["client"])


def test_a_topology_with_neither_roles_nor_a_host_node_is_refused_naming_the_nodes() -> None:
    topology = topology_from_dict({"nodes": {"a": {}, "b": {}}}, source="two.toml")
    with pytest.raises(
        TopologyError, match=r"two.toml: no host node: add \[roles\] host = \"NODE\".*\['a', 'b'\]"
    ):
        roles_of(topology)


def test_a_role_naming_an_unknown_node_is_refused() -> None:
    with pytest.raises(TopologyError, match=r"roles.backend names unknown node 'bakend'"):
        topology_from_dict({"nodes": {"host": {}}, "roles": {"host": "host", "backend": "bakend"}})


def test_a_spoofed_network_outside_the_documentation_ranges_is_refused() -> None:
    with pytest.raises(TopologyError, match=r"roles.spoofed: address '10.0.0.0/8' is outside"):
        topology_from_dict({"nodes": {"host": {}}, "roles": {"spoofed": ["10.0.0.0/8"]}})


@pytest.mark.privileged  # a Lab handle registers its scratch directory in /run/netlab
def test_a_dual_stack_lab_gives_one_deployment_per_family_with_addresses_from_the_links() -> None:
    topology = load_topology("dual-stack")
    with Lab.attached("abcdef", list(topology.nodes)) as lab:
        v4, v6 = deployments_of(lab, topology)
    assert (v4.backend_address, v4.host_address, v4.host_backend_address) == (
        "192.0.2.2",
        "198.51.100.1",
        "192.0.2.1",
    )
    assert list(v4.clients) == ["198.51.100.10", "203.0.113.7"]
    assert (v6.backend_address, v6.host_address) == ("2001:db8:2::2", "2001:db8:51::1")
    assert list(v6.clients) == ["2001:db8:51::10", "2001:db8:113::7"]
    assert v4.host.fix("sysctl -w x=1") == "netlab exec host -- sysctl -w x=1"
