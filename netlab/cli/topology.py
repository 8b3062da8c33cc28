"""`netlab graph`: draw a topology file (or a shipped one) as Mermaid or Graphviz dot. Needs neither root
nor netlab's lab dependencies: it only reads the file."""

import argparse
from pathlib import Path

from netlab.cli.common import Commands
from netlab.topology.graph import FORMATS, draw


def cmd_graph(args: argparse.Namespace) -> int:
    from netlab.fixtures import load_topology
    from netlab.topology.file import load_topology_file

    path = Path(args.file)
    topology = load_topology_file(path) if path.is_file() else load_topology(args.file)
    print(draw(topology, args.format), end="")
    return 0


def register(commands: Commands) -> None:
    """Add graph."""
    graph = commands.add_parser(
        "graph", help="draw a topology as Mermaid (GitHub renders it) or Graphviz dot"
    )
    graph.add_argument(
        "file", metavar="FILE", help="a topology file, or a shipped name (seed, dual-stack, ...)"
    )
    graph.add_argument("--format", choices=FORMATS, default="mermaid", help="mermaid (default) or dot")
    graph.set_defaults(handler=cmd_graph, after_interrupt="", needs_lab=False)
