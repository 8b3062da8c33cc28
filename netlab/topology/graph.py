"""`netlab graph`: a topology drawn as text that GitHub and documentation sites render, Mermaid or
Graphviz dot: its nodes with their roles (the forwarder's host, the backend, clients and the networks they
spoof), and its links with each end's interface and addresses. A scenario adds its traffic (dashed, from
the sending node to the node it is sent to) and the forwarder's destinations.

In dot, each link is a small node of its own (its network) joined to both ends by edges whose `label`
names the interface and addresses: dot places edge labels as part of the layout, whereas head and tail
labels are placed afterwards and overlap as soon as a node has several links."""

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass

from netlab.errors import NetlabError
from netlab.topology.model import Link, Topology

FORMATS = ("mermaid", "dot", "svg")


@dataclass(frozen=True)
class Flow:
    """A dashed arrow of a scenario drawing: from one node to another, labelled."""

    source: str
    target: str
    label: str
    kind: str  # "traffic" or "forwarded"


def _role(topology: Topology, node: str) -> str:
    roles = topology.roles_or_defaults()
    if node == roles.host:
        return "host (forwarder)"
    if node == roles.backend:
        return "backend"
    if node in roles.clients:
        return "client" + (f", spoofs {', '.join(roles.spoofed)}" if roles.spoofed else "")
    return ""


def _mermaid_id(node: str) -> str:
    return "n_" + node.replace("-", "_")


def _end_text(link: Link, side: str, separator: str) -> str:
    """One end of a link: its interface and addresses."""
    end = link.a if side == "a" else link.b
    return separator.join([end.ifname, *end.addresses])


def _networks(link: Link) -> list[str]:
    """The networks of a link's addresses, each once, in order."""
    networks: list[str] = []
    for text in [*link.a.addresses, *link.b.addresses]:
        network = str(ipaddress.ip_interface(text).network)
        if network not in networks:
            networks.append(network)
    return networks


def to_mermaid(topology: Topology, flows: list[Flow] | None = None) -> str:
    """A Mermaid flowchart (```mermaid in Markdown): one box per node, one labelled line per link, and a
    dashed arrow per flow of a scenario."""
    lines = ["flowchart LR"]
    for node in topology.nodes:
        role = _role(topology, node)
        label = f"<b>{node}</b>" + (f"<br/>{role}" if role else "")
        lines.append(f'    {_mermaid_id(node)}["{label}"]')
    for link in topology.links:
        label = f"{link.a.node} {_end_text(link, 'a', ' ')}<br/>{link.b.node} {_end_text(link, 'b', ' ')}"
        if link.mtu is not None:
            label += f"<br/>mtu {link.mtu}"
        lines.append(f'    {_mermaid_id(link.a.node)} ---|"{label}"| {_mermaid_id(link.b.node)}')
    for flow in flows or []:
        label = flow.label.replace("\n", "<br/>")
        lines.append(f'    {_mermaid_id(flow.source)} -.->|"{label}"| {_mermaid_id(flow.target)}')
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    """A dot string: backslashes and quotes escaped, line breaks as dot's \\n."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_FLOW_STYLE = {
    "traffic": 'style=dashed, color="#1f6feb", fontcolor="#1f6feb"',
    "forwarded": 'style=dashed, color="#2da44e", fontcolor="#2da44e"',
}


def to_dot(topology: Topology, flows: list[Flow] | None = None, name: str = "") -> str:
    """A Graphviz graph (`dot -Tsvg`): boxes for nodes, a small ellipse per link naming its network, the
    ends' interfaces and addresses as edge labels, and a dashed arrow per flow of a scenario."""
    title = name or topology.description or topology.source
    lines = [
        f"graph {_dot_quote(title)} {{",
        "    rankdir=LR; nodesep=0.5; ranksep=0.5;",
        '    node [shape=box, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for node in topology.nodes:
        role = _role(topology, node)
        lines.append(f"    {_dot_quote(node)} [label={_dot_quote(node + (chr(10) + role if role else ''))}];")
    for index, link in enumerate(topology.links):
        net = f"link{index}"
        ports = [f"port of {end.master}" for end in (link.a, link.b) if end.master is not None]
        label = "\n".join((_networks(link) or ports) + ([f"mtu {link.mtu}"] if link.mtu is not None else []))
        lines.append(
            f"    {net} [shape=ellipse, style=dashed, fontsize=10, margin=0.02, label={_dot_quote(label)}];"
        )
        lines.append(
            f"    {_dot_quote(link.a.node)} -- {net} [label={_dot_quote(_end_text(link, 'a', chr(10)))}];"
        )
        lines.append(
            f"    {net} -- {_dot_quote(link.b.node)} [label={_dot_quote(_end_text(link, 'b', chr(10)))}];"
        )
    for flow in flows or []:
        lines.append(
            f"    {_dot_quote(flow.source)} -- {_dot_quote(flow.target)} "
            f"[dir=forward, constraint=false, {_FLOW_STYLE[flow.kind]}, label={_dot_quote(flow.label)}];"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(dot_text: str) -> str:
    """The dot text rendered by graphviz's `dot -Tsvg`; NetlabError when dot is missing or fails."""
    program = shutil.which("dot")
    if program is None:
        raise GraphvizMissingError(
            "--format svg needs graphviz's dot, which is not installed: apt install graphviz "
            "(./dev installs it), or use --format dot"
        )
    result = subprocess.run([program, "-Tsvg"], input=dot_text, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetlabError(f"dot -Tsvg failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout


class GraphvizMissingError(NetlabError):
    """graphviz's dot is not installed."""


def draw(topology: Topology, form: str, flows: list[Flow] | None = None, name: str = "") -> str:
    """The topology (and a scenario's flows) in `form`, one of FORMATS."""
    if form == "mermaid":
        return to_mermaid(topology, flows)
    dot = to_dot(topology, flows, name)
    return dot if form == "dot" else to_svg(dot)


__all__ = ["FORMATS", "Flow", "GraphvizMissingError", "draw", "to_dot", "to_mermaid", "to_svg"]
