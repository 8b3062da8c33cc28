"""Topologies drawn: `netlab graph` writes Mermaid and Graphviz dot from a topology file, and the ASCII
drawing at the top of every shipped topology file names only the nodes and addresses the file really has."""

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import forwarder
import netlab
from netlab.fixtures import load_topology, topology_names, topology_path
from netlab.topology.graph import to_dot, to_mermaid
from netlab.topology.model import Topology

IPV4 = r"(?<![\w.:])\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?(?![\w.])"
IPV6 = r"(?<![\w:])2001:db8:[0-9a-f:]*[0-9a-f](?:/\d{1,3})?(?![\w:])"


def drawing(name: str) -> str:
    """The comment block at the top of a shipped topology file: its drawing and address plan."""
    lines = []
    for line in topology_path(name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.removeprefix("#"))
    return "\n".join(lines)


def drawing_problems(topology: Topology, text: str) -> list[str]:
    """What a drawing says that the topology does not have, or leaves out: every node must be named, every
    interface address (of veth ends and of devices such as bridges) written; every address or network
    written must be an interface address, a link's network, a route's destination or a spoofed range (an
    example source from one, say), and an address on a link's network must be an interface's."""
    problems = [f"node {node!r} is not drawn" for node in topology.nodes if not _named(node, text)]
    interfaces = {
        ipaddress.ip_interface(address)
        for link in topology.links
        for end in (link.a, link.b)
        for address in end.addresses
    } | {ipaddress.ip_interface(address) for device in topology.devices for address in device.addresses}
    links = {interface.network for interface in interfaces}
    addresses = {interface.ip for interface in interfaces}
    others = {
        ipaddress.ip_network(route.destination) for route in topology.routes if "/" in route.destination
    }
    others |= {ipaddress.ip_network(spoofed) for spoofed in topology.roles_or_defaults().spoofed}
    written = re.findall(f"{IPV4}|{IPV6}", text)
    seen = {ipaddress.ip_interface(found).ip for found in written}
    problems += [f"address {address} is not in the drawing" for address in sorted(addresses - seen, key=str)]
    for found in written:
        if "/" in found:
            if (
                ipaddress.ip_interface(found) in interfaces
                or ipaddress.ip_network(found, strict=False) in links | others
            ):
                continue
            problems.append(f"the drawing names {found}, which is no interface or network of the file")
            continue
        address = ipaddress.ip_address(found)
        if address in addresses:
            continue
        if any(address in network for network in links):
            problems.append(f"the drawing names {found}, which no interface on its link has")
        elif not any(address in network for network in others):
            problems.append(f"the drawing names {found}, which is no address of the file")
    return problems


def _named(node: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(node)}(?![\w-])", text) is not None


@pytest.mark.parametrize("name", topology_names())
def test_the_drawing_of_a_shipped_topology_matches_its_nodes_and_addresses(name: str) -> None:
    text = drawing(name)
    assert text.strip(), f"{name}.toml starts without a drawing"
    assert drawing_problems(load_topology(name), text) == []


def test_the_check_catches_a_drawing_that_drifted() -> None:
    topology, text = load_topology("seed"), drawing("seed")
    assert drawing_problems(topology, text.replace("| 192.0.2.2       |", "| 192.0.2.3       |")) == [
        "the drawing names 192.0.2.3, which no interface on its link has"
    ]
    assert drawing_problems(topology, text.replace("backend", "container")) == ["node 'backend' is not drawn"]
    moved = text.replace("198.51.100.10", "198.51.100.11")
    assert "address 198.51.100.10 is not in the drawing" in drawing_problems(topology, moved)
    assert "the drawing names 10.0.0.1, which is no address of the file" in drawing_problems(
        topology, text + "\n 10.0.0.1"
    )


def test_mermaid_draws_every_node_with_its_role_and_every_link_with_both_ends() -> None:
    text = to_mermaid(load_topology("seed"))
    assert text.startswith("flowchart LR\n")
    assert '    n_client["<b>client</b><br/>client, spoofs 203.0.113.0/24"]' in text
    assert '    n_host["<b>host</b><br/>host (forwarder)"]' in text
    assert '    n_backend["<b>backend</b><br/>backend"]' in text
    assert (
        '    n_client ---|"client to-host 198.51.100.10/24<br/>host to-client 198.51.100.1/24"| n_host'
        in text
    )
    assert '    n_host ---|"host to-backend 192.0.2.1/24<br/>backend to-host 192.0.2.2/24"| n_backend' in text
    assert text.count("---|") == 2


def test_dot_labels_each_end_of_a_link_at_its_node() -> None:
    text = to_dot(load_topology("dual-stack"))
    assert text.startswith('graph "dual-stack seed deployment')
    assert (
        '"host" -- "backend" [taillabel="to-backend\\n192.0.2.1/24\\n2001:db8:2::1/64", '
        'headlabel="to-host\\n192.0.2.2/24\\n2001:db8:2::2/64"];'
    ) in text


@pytest.mark.parametrize("name", topology_names())
def test_graphviz_renders_the_dot_of_every_shipped_topology(name: str) -> None:
    dot = shutil.which("dot")
    if dot is None:
        pytest.skip("graphviz's dot is not installed (./dev installs it)")
    result = subprocess.run(
        [dot, "-Tsvg"], input=to_dot(load_topology(name)), capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "<svg" in result.stdout


def test_netlab_graph_needs_neither_root_nor_the_lab_extra(tmp_path: Path) -> None:
    site = tmp_path / "bare"
    site.mkdir()
    for package in (netlab, forwarder):
        (site / package.__name__).symlink_to(Path(package.__path__[0]))
    result = subprocess.run(
        [sys.executable, "-S", "-m", "netlab", "graph", str(topology_path("faults")), "--format", "dot"],
        env=dict(os.environ, PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == to_dot(load_topology("faults"))
