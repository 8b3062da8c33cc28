"""Topology files: the shipped ones load and agree with the Python names; bad files fail naming the file,
the element and the bad value."""

from pathlib import Path

import pytest

from netlab import TopologyError
from netlab.errors import FixtureNotFoundError
from netlab.fixtures import load_topology, topology_names, topology_path
from netlab.topologies import seed_deployment
from netlab.topology_file import load_topology_file

SEED_LIKE = """
[nodes.client]
[nodes.host.sysctl]
"net.ipv4.ip_forward" = 1
[[links]]
a = { node = "client", addresses = ["198.51.100.10/24"] }
b = { node = "host", addresses = ["198.51.100.1/24"] }
mtu = 1400
[[routes]]
node = "client"
to = "default"
via = "198.51.100.1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    return path


def test_shipped_topologies_include_the_seed_its_ipv6_twin_dual_stack_and_docker_bridge() -> None:
    assert {"seed", "seed-ipv6", "dual-stack", "docker-bridge"} <= set(topology_names())


@pytest.mark.parametrize("name", ["seed", "seed-ipv6", "dual-stack", "docker-bridge"])
def test_each_shipped_topology_starts_with_a_drawing_and_an_address_plan(name: str) -> None:
    text = topology_path(name).read_text()
    header = text.split("\n\n")[0] + text.split("\n\n")[1]
    assert text.startswith("#")
    assert "+----" in header
    assert "Address plan" in text.split("description")[0]


def test_seed_deployment_is_the_seed_file_with_the_documented_address_plan() -> None:
    seed = seed_deployment()
    assert seed.source == str(topology_path("seed"))
    assert seed.addresses_of("client") == ["198.51.100.10"]
    assert seed.addresses_of("host") == ["198.51.100.1", "192.0.2.1"]
    assert seed.addresses_of("backend") == ["192.0.2.2"]
    assert [(r.node, r.destination, r.via) for r in seed.routes] == [
        ("client", "default", "198.51.100.1"),
        ("host", "203.0.113.0/24", "198.51.100.10"),
        ("backend", "default", "192.0.2.1"),
    ]
    assert seed.nodes["host"].sysctls == {"net.ipv4.ip_forward": "1"}


def test_dual_stack_gives_every_node_both_families() -> None:
    topology = load_topology("dual-stack")
    for node in topology.nodes:
        versions = {6 if ":" in address else 4 for address in topology.addresses_of(node)}
        assert versions == {4, 6}, node


def test_a_file_parses_links_with_mtu_and_default_interface_names(tmp_path: Path) -> None:
    topology = load_topology_file(write(tmp_path, SEED_LIKE))
    (link,) = topology.links
    assert (link.a.ifname, link.b.ifname, link.mtu) == ("to-host", "to-client", 1400)


def test_a_bridge_link_puts_containers_on_a_bridge_in_the_host() -> None:
    topology = load_topology("docker-bridge")
    (bridge,) = topology.bridges
    assert (bridge.node, bridge.ifname, bridge.addresses) == ("host", "docker0", ["192.0.2.1/24"])
    assert [(port.node, port.ifname, port.host_ifname) for port in bridge.ports] == [
        ("web", "eth0", "veth-web"),
        ("other", "eth0", "veth-other"),
    ]
    assert topology.addresses_of("host") == ["198.51.100.1", "192.0.2.1"]
    assert topology.interfaces_of("web") == ["eth0"]


BRIDGE_LIKE = """
[nodes.host]
[nodes.web]
[[links]]
kind = "bridge"
bridge = { node = "host", ifname = "docker0", addresses = ["192.0.2.1/24"] }
ports = [{ node = "web", addresses = ["192.0.2.2/24"] }]
"""


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            ('kind = "bridge"', 'kind = "hub"'),
            "links[0].kind: 'hub': expected 'veth' (the default) or 'bridge'",
        ),
        ((' ifname = "docker0",', ""), "links[0].bridge.ifname: the bridge needs a name"),
        (('{ node = "web",', '{ node = "host",'), "port 'host' is the bridge's own node"),
        (('{ node = "web",', '{ node = "wbe",'), "names unknown node 'wbe'"),
        (("ports = [", "ports = [] #"), "a bridge needs at least one port"),
        (('"192.0.2.2/24"', '"192.0.2.1/24"'), "address '192.0.2.1/24' is already used on host/docker0"),
        (('"docker0"', '"a-very-long-bridge"'), "interface name 'a-very-long-bridge' must be 1 to 15"),
        (
            ('addresses = ["192.0.2.2/24"] }', 'addresses = ["192.0.2.2/24"], speed = 1 }'),
            "unknown key 'speed'",
        ),
    ],
)
def test_a_bad_bridge_is_refused_naming_the_element_and_the_value(
    tmp_path: Path, change: tuple[str, str], fragment: str
) -> None:
    old, new = change
    assert old in BRIDGE_LIKE
    with pytest.raises(TopologyError) as caught:
        load_topology_file(write(tmp_path, BRIDGE_LIKE.replace(old, new, 1)))
    assert fragment in str(caught.value)


def test_unknown_fixture_names_the_known_ones() -> None:
    with pytest.raises(FixtureNotFoundError, match=r"'no-such'.*'seed'"):
        load_topology("no-such")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (('node = "host", addresses', 'node = "hots", addresses'), "names unknown node 'hots'"),
        (
            ("198.51.100.1/24", "198.51.100.300/24"),
            "links[0] (client<->host): bad address '198.51.100.300/24'",
        ),
        (
            ("198.51.100.1/24", "198.51.100.10/24"),
            "address '198.51.100.10/24' is already used on client/to-host",
        ),
        (("198.51.100.1/24", "198.51.100.1"), "address '198.51.100.1' needs a prefix length"),
        (("198.51.100.1/24", "10.0.0.1/24"), "address '10.0.0.1/24' is outside the lab's address ranges"),
        (
            ('node = "host", addresses', 'node = "host", ifname = "a-very-long-name0", addresses'),
            "interface name 'a-very-long-name0' must be 1 to 15 characters",
        ),
        (("mtu = 1400", "mtu = 40"), "links[0] (client<->host): mtu 40 must be an integer from 68 to 65535"),
        (("mtu = 1400", 'mtu = "big"'), "links[0].mtu: 'big' must be an integer"),
        (
            ('via = "198.51.100.1"', 'via = "gateway"'),
            "routes[0] ('default' in 'client'): bad gateway 'gateway'",
        ),
        (('to = "default"', 'to = "203.0.113.0/33"'), "bad destination '203.0.113.0/33'"),
        (
            ('to = "default"', 'to = "2001:db8::/32"'),
            "gateway '198.51.100.1' is not in the family of '2001:db8::/32'",
        ),
        (("mtu = 1400", "speed = 10"), "links[0]: unknown key 'speed'"),
        (
            ('"net.ipv4.ip_forward" = 1', '"net.ipv4.ip_forward" = true'),
            "value True of 'net.ipv4.ip_forward'",
        ),
        (("[nodes.client]", "[nodes.Client_1]"), "bad node name 'Client_1'"),
        (("[[routes]]", "[[routes]"), "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_the_element_and_the_value(
    tmp_path: Path, change: tuple[str, str], fragment: str
) -> None:
    old, new = change
    assert old in SEED_LIKE
    path = write(tmp_path, SEED_LIKE.replace(old, new, 1))
    with pytest.raises(TopologyError) as caught:
        load_topology_file(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert fragment in message


def test_a_missing_file_is_named() -> None:
    with pytest.raises(TopologyError, match=r"cannot read topology file '/nonexistent/x.toml'"):
        load_topology_file("/nonexistent/x.toml")
