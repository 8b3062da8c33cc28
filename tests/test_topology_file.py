"""Topology files: the shipped ones load and agree with the Python names; bad files fail naming the file,
the element and the bad value."""

import re
from pathlib import Path

import pytest

from netlab import TopologyError
from netlab.errors import FixtureNotFoundError
from netlab.fixtures import load_topology, topology_names, topology_path
from netlab.topology.file import load_topology_file
from netlab.topology.shipped import seed_deployment

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


def test_shipped_topologies_include_the_seed_its_ipv6_twin_and_dual_stack() -> None:
    assert {"seed", "seed-ipv6", "dual-stack", "docker-bridge"} <= set(topology_names())


BOXED = ["seed", "seed-ipv6", "dual-stack", "docker-bridge"]


@pytest.mark.parametrize("name", BOXED)
def test_each_shipped_topology_starts_with_a_drawing_and_an_address_plan(name: str) -> None:
    text = topology_path(name).read_text()
    header = text.split("\n\n")[0] + text.split("\n\n")[1]
    assert text.startswith("#")
    assert "+----" in header
    assert "Address plan" in text.split("description")[0]


@pytest.mark.parametrize("name", BOXED)
def test_every_address_of_a_shipped_topology_is_in_its_drawing_and_address_plan(name: str) -> None:
    topology = load_topology(name)
    header = topology_path(name).read_text().split("description")[0]
    for node in topology.nodes:
        for address in topology.addresses_of(node):
            assert re.search(rf"(?<![0-9a-f:.]){re.escape(address)}(?![0-9a-f:.])", header), (name, address)


def test_the_docker_bridge_topology_puts_the_hosts_address_on_the_bridge_and_the_veths_in_it() -> None:
    topology = load_topology("docker-bridge")
    (bridge,) = topology.devices
    assert (bridge.node, bridge.name, bridge.kind) == ("host", "docker0", "bridge")
    assert bridge.addresses == ["192.0.2.1/24", "2001:db8:2::1/64"]
    ports = [end for link in topology.links for end in (link.a, link.b) if end.master == "docker0"]
    assert [(end.node, end.ifname, end.addresses) for end in ports] == [
        ("host", "veth-c1", []),
        ("host", "veth-c2", []),
    ]
    assert topology.addresses_on(ports[0]) == bridge.addresses
    assert topology.interfaces_of("host") == ["to-client", "veth-c1", "veth-c2", "docker0"]
    assert topology.addresses_of("host") == ["198.51.100.1", "2001:db8:51::1", "192.0.2.1", "2001:db8:2::1"]


BRIDGED = """
[nodes.host]
[nodes.c1]
[[devices]]
node = "host"
name = "docker0"
kind = "bridge"
addresses = ["192.0.2.1/24"]
[[links]]
a = { node = "host", ifname = "veth-c1", master = "docker0" }
b = { node = "c1", addresses = ["192.0.2.2/24"] }
"""


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            ('kind = "bridge"', 'kind = "vlan"'),
            "devices[0] (vlan 'docker0' in 'host'): kind 'vlan': expected one of ['bridge']",
        ),
        (('kind = "bridge"', "kind = 1"), "devices[0].kind: expected a string, got 1"),
        (
            ('name = "docker0"', 'name = "docker0-is-too-long"'),
            "device name 'docker0-is-too-long' must be 1 to 15",
        ),
        (
            ('node = "host"\nname', 'node = "hots"\nname'),
            "devices[0] (bridge 'docker0' in 'hots') names unknown node 'hots'",
        ),
        (
            ('master = "docker0"', 'master = "br0"'),
            "links[0] (host<->c1): master 'br0' is not a bridge of node 'host' (its bridges: ['docker0'])",
        ),
        (
            ('master = "docker0" }', 'master = "docker0", addresses = ["192.0.2.9/24"] }'),
            "host/veth-c1 is a port of bridge 'docker0': a port carries no addresses, put ['192.0.2.9/24']",
        ),
        (('master = "docker0"', "master = 7"), "links[0].a.master: expected a bridge name, got 7"),
        (
            ('addresses = ["192.0.2.1/24"]', 'addresses = ["192.0.2.2/24"]'),
            "address '192.0.2.2/24' is already used on host/docker0",
        ),
        (
            ('addresses = ["192.0.2.1/24"]', 'addresses = ["10.0.0.1/8"]'),
            "address '10.0.0.1/8' is outside the lab's address ranges",
        ),
        (('kind = "bridge"', 'kind = "bridge"\nstp = true'), "devices[0]: unknown key 'stp'"),
        (('ifname = "veth-c1", ', 'ifname = "docker0", '), "node 'host' already has an interface 'docker0'"),
    ],
)
def test_a_bad_device_or_bridge_port_is_refused_naming_the_file_the_element_and_the_value(
    tmp_path: Path, change: tuple[str, str], fragment: str
) -> None:
    old, new = change
    assert old in BRIDGED
    path = write(tmp_path, BRIDGED.replace(old, new, 1))
    with pytest.raises(TopologyError) as caught:
        load_topology_file(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert fragment in message


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


STEERED = SEED_LIKE.replace(
    "[[links]]",
    """[[nodes.host.tproxy]]
version = 4
to_port = 27000
dports = "27000-27099"
daddr = "198.51.100.1"
[[nodes.host.tproxy]]
version = 4
to_port = 40000
saddr = "198.51.100.10"
sports = [5353, "6000-6010"]
iifname = "to-client"
rule = false
[[links]]""",
    1,
)


def test_a_nodes_tproxy_tables_read_into_steerings_with_their_selectors_and_switches(tmp_path: Path) -> None:
    topology = load_topology_file(write(tmp_path, STEERED))
    ranged, replies = topology.steerings
    assert (ranged.node, ranged.version, ranged.to_port, ranged.dports, ranged.daddr) == (
        "host",
        4,
        27000,
        ((27000, 27099),),
        "198.51.100.1",
    )
    assert (ranged.nft, ranged.rule, ranged.route) == (True, True, True)
    assert replies.sports == ((5353, 5353), (6000, 6010))
    assert (replies.iifname, replies.rule, replies.route) == ("to-client", False, True)
    assert (
        replies.describe() == "host: ip saddr 198.51.100.10 udp sport 5353,6000-6010 -> :40000 (without rule)"
    )


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            ("version = 4\nto_port = 27000", "version = 5\nto_port = 27000"),
            "tproxy[0].version: expected 4 or 6, got 5",
        ),
        (
            ("to_port = 27000", "to_port = 0"),
            "nodes.host.tproxy[0].to_port: expected a port of 1 to 65535, got 0",
        ),
        (("to_port = 27000\n", ""), "nodes.host.tproxy[0].to_port: expected a port of 1 to 65535, got None"),
        (
            ('dports = "27000-27099"', 'dports = "27099-27000"'),
            "tproxy[0].dports: '27099-27000': the first port",
        ),
        (
            ('dports = "27000-27099"', 'dports = "27000-70000"'),
            "tproxy[0].dports: '27000-70000': expected a port",
        ),
        (('dports = "27000-27099"', 'dports = "many"'), "tproxy[0].dports: 'many': expected a port"),
        (('dports = "27000-27099"', "dports = []"), "tproxy[0].dports: []: expected a port"),
        (
            ('dports = "27000-27099"\n', ""),
            "nodes.host.tproxy[0]: needs dports (a range clients send to) or sports",
        ),
        (
            ('daddr = "198.51.100.1"', 'daddr = "2001:db8::1"'),
            "'2001:db8::1' is not an IPv4 address (version = 4)",
        ),
        (
            ('daddr = "198.51.100.1"', 'daddr = "10.0.0.1"'),
            "tproxy[0].daddr: address '10.0.0.1' is outside the lab",
        ),
        (
            ('daddr = "198.51.100.1"', 'daddr = "host"'),
            "tproxy[0].daddr: bad address 'host': expected an address",
        ),
        (('iifname = "to-client"', 'iifname = "eth9"'), "iifname 'eth9' is not an interface of node 'host'"),
        (("rule = false", 'rule = "no"'), "nodes.host.tproxy[1].rule: expected true or false, got 'no'"),
        (("rule = false", "mark = 7"), "nodes.host.tproxy[1]: unknown key 'mark'"),
        (
            (
                "[[nodes.host.tproxy]]\nversion = 4\nto_port = 40000",
                "[nodes.host.tproxy]\nversion = 4\nto_port = 40000",
            ),
            "not valid TOML",
        ),
    ],
)
def test_a_bad_tproxy_table_is_refused_in_one_line_naming_the_file_the_element_and_the_value(
    tmp_path: Path, change: tuple[str, str], fragment: str
) -> None:
    old, new = change
    assert old in STEERED
    path = write(tmp_path, STEERED.replace(old, new, 1))
    with pytest.raises(TopologyError) as caught:
        load_topology_file(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    assert fragment in message


def test_a_tproxy_list_that_is_not_tables_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, SEED_LIKE.replace("[nodes.client]", "[nodes.client]\ntproxy = [1]", 1))
    with pytest.raises(TopologyError, match=r"nodes.client.tproxy\[0\]: expected a table, got 1"):
        load_topology_file(path)
