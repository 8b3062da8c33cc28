"""`netlab graph`: a topology drawn as text that GitHub and documentation sites render, Mermaid or
Graphviz dot: its nodes with their roles (the forwarder's host, the backend, clients and the networks they
spoof), and its links with each end's interface and addresses."""

from netlab.topology.model import Link, Topology

FORMATS = ("mermaid", "dot")


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


def to_mermaid(topology: Topology) -> str:
    """A Mermaid flowchart (```mermaid in Markdown): one box per node, one labelled line per link."""
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
    return "\n".join(lines) + "\n"


def _dot_quote(text: str) -> str:
    """A dot string: backslashes and quotes escaped, line breaks as dot's \\n."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(topology: Topology) -> str:
    """A Graphviz graph (`dot -Tsvg`): boxes for nodes, each link's ends labelled at their own node."""
    name = topology.description or topology.source
    lines = [f"graph {_dot_quote(name)} {{", "    rankdir=LR;", "    node [shape=box];"]
    for node in topology.nodes:
        role = _role(topology, node)
        lines.append(f"    {_dot_quote(node)} [label={_dot_quote(node + (chr(10) + role if role else ''))}];")
    for link in topology.links:
        attributes = [
            f"taillabel={_dot_quote(_end_text(link, 'a', chr(10)))}",
            f"headlabel={_dot_quote(_end_text(link, 'b', chr(10)))}",
        ]
        if link.mtu is not None:
            attributes.append(f"label={_dot_quote(f'mtu {link.mtu}')}")
        lines.append(f"    {_dot_quote(link.a.node)} -- {_dot_quote(link.b.node)} [{', '.join(attributes)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(topology: Topology, form: str) -> str:
    """The topology in `form`, one of FORMATS."""
    return to_mermaid(topology) if form == "mermaid" else to_dot(topology)
