"""Topologies drawn: `netlab graph` writes Mermaid and Graphviz dot from a topology file, and the ASCII
drawing at the top of every shipped topology file names only the nodes and addresses the file really has."""

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import forwarder
import netlab
from netlab.cli.main import main
from netlab.fixtures import load_topology, scenario_names, scenario_path, topology_names, topology_path
from netlab.scenario.graph import scenario_flows
from netlab.scenario.load import load_scenario
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


def test_dot_draws_each_link_as_its_network_with_the_ends_as_edge_labels() -> None:
    text = to_dot(load_topology("dual-stack"))
    assert text.startswith('graph "dual-stack seed deployment')
    network = 'label="192.0.2.0/24\\n2001:db8:2::/64"'
    assert f"link1 [shape=ellipse, style=dashed, fontsize=10, margin=0.02, {network}];" in text
    assert '"host" -- link1 [label="to-backend\\n192.0.2.1/24\\n2001:db8:2::1/64"];' in text
    assert 'link1 -- "backend" [label="to-host\\n192.0.2.2/24\\n2001:db8:2::2/64"];' in text
    assert "taillabel" not in text
    assert "headlabel" not in text


def _laid_out_boxes(dot_text: str) -> list[tuple[str, float, float, float, float]]:
    """Where graphviz puts each node and each edge label (points): (what, x0, y0, x1, y1)."""
    result = subprocess.run(["dot", "-Tjson"], input=dot_text, capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    boxes = []
    for obj in data.get("objects", []):
        if "pos" in obj:
            x, y = map(float, obj["pos"].split(","))
            w, h = float(obj["width"]) * 36, float(obj["height"]) * 36  # half sizes, inches to points
            boxes.append((f"node {obj['name']}", x - w, y - h, x + w, y + h))
    for edge in data.get("edges", []):
        for key in ("_ldraw_", "_hldraw_", "_tldraw_"):  # the label, the head label, the tail label
            size, texts = 14.0, []
            for op in edge.get(key, []):
                if op["op"] == "F":
                    size = op["size"]
                elif op["op"] == "T":
                    (x, y), width = op["pt"], op["width"]
                    texts.append((x - width / 2, y - 2, x + width / 2, y + size - 2))
            if texts:
                x0, y0 = min(t[0] for t in texts), min(t[1] for t in texts)
                x1, y1 = max(t[2] for t in texts), max(t[3] for t in texts)
                boxes.append((f"edge {edge['_gvid']} {key}", x0, y0, x1, y1))
    return boxes


def _overlaps(dot_text: str) -> list[tuple[str, str]]:
    boxes = _laid_out_boxes(dot_text)
    return [
        (p[0], q[0])
        for index, p in enumerate(boxes)
        for q in boxes[index + 1 :]
        if p[1] < q[3] and q[1] < p[3] and p[2] < q[4] and q[2] < p[4]
    ]


def _needs_dot() -> None:
    if shutil.which("dot") is None:
        pytest.skip("graphviz's dot is not installed (./dev installs it)")


def test_the_overlap_check_catches_labels_drawn_on_the_nodes() -> None:
    _needs_dot()
    crowded = (
        'graph g { a -- b [taillabel="a long tail label\\nover two lines", headlabel="and a head label"]; }'
    )
    assert ("node a", "edge 0 _tldraw_") in _overlaps(crowded)


@pytest.mark.parametrize("name", topology_names())
def test_no_label_of_the_dot_drawing_overlaps_another_or_a_node(name: str) -> None:
    _needs_dot()
    assert _overlaps(to_dot(load_topology(name))) == []


@pytest.mark.parametrize("name", scenario_names())
def test_every_shipped_scenario_is_drawn_with_its_traffic_and_nothing_overlaps(name: str) -> None:
    _needs_dot()
    scenario = load_scenario(name)
    flows = scenario_flows(scenario)
    if scenario.traffic:
        assert any(flow.kind == "traffic" for flow in flows), name
    assert _overlaps(to_dot(scenario.topology, flows)) == []


def test_a_scenario_is_drawn_with_its_traffic_and_the_forwarders_destination() -> None:
    scenario = load_scenario("relay-fragmented-reply-intact")
    text = to_mermaid(scenario.topology, scenario_flows(scenario))
    assert '    n_client -.->|"3000 B client:4242 -> 198.51.100.1:27000"| n_host' in text
    assert '    n_host -.->|"forwards to 192.0.2.2:5353"| n_backend' in text


def test_netlab_graph_draws_a_scenario_file_and_a_shipped_scenario_by_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["graph", str(scenario_path("backend-unreachable-counted"))]) == 0
    drawn = capsys.readouterr().out
    assert "192.0.2.1/25" in drawn  # its topology is the file next to it
    assert '<br/>15 B 203.0.113.7:4242 -> 198.51.100.1:27003"| n_host' in drawn
    assert main(["graph", "zero-length-datagram", "--format", "dot"]) == 0
    assert "0 B 203.0.113.7:4242 -> 198.51.100.1:27000" in capsys.readouterr().out


def test_netlab_graph_renders_svg_through_graphviz(capsys: pytest.CaptureFixture[str]) -> None:
    _needs_dot()
    assert main(["graph", "seed", "--format", "svg"]) == 0
    svg = capsys.readouterr().out
    assert svg.startswith("<?xml")
    assert "<svg" in svg
    assert "198.51.100.10/24" in svg


def test_netlab_graph_svg_without_graphviz_exits_69_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["graph", "seed", "--format", "svg"]) == 69
    assert "apt install graphviz" in capsys.readouterr().err


def test_a_topology_naming_an_unknown_node_exits_78_as_the_readme_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(
        "[nodes.a]\n[[links]]\na = { node = 'a', addresses = ['192.0.2.1/24'] }\n"
        "b = { node = 'zz', addresses = ['192.0.2.2/24'] }\n"
    )
    assert main(["graph", str(path)]) == 78
    assert "names unknown node 'zz'; known nodes: ['a']" in capsys.readouterr().err


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
