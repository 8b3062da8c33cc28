"""`netlab graph`: draw a topology or a scenario file (or a shipped one by name) as Mermaid, Graphviz dot or
SVG. Needs neither root nor netlab's lab dependencies: it only reads the file."""

import argparse
import sys
import tomllib
from pathlib import Path

from netlab.cli.common import EX_UNAVAILABLE, Commands
from netlab.errors import FixtureNotFoundError
from netlab.topology.graph import FORMATS, Flow, GraphvizMissingError, draw
from netlab.topology.model import Topology

# Tables only a scenario has: a file with one of them is drawn as a scenario.
SCENARIO_TABLES = {"topology", "forwarder", "setup", "echo", "reply_path", "traffic", "expect"}


def _is_scenario(path: Path) -> bool:
    try:
        return bool(SCENARIO_TABLES & set(tomllib.loads(path.read_text())))
    except tomllib.TOMLDecodeError:
        return False  # the topology loader names the error


def _scenario(file_or_name: str | Path) -> tuple[Topology, list[Flow], str]:
    from netlab.scenario.graph import scenario_flows
    from netlab.scenario.load import load_scenario

    scenario = load_scenario(file_or_name)
    return scenario.topology, scenario_flows(scenario), scenario.description or scenario.name


def _resolve(text: str) -> tuple[Topology, list[Flow], str]:
    """A topology or scenario file, else a shipped topology's name, else a shipped scenario's."""
    from netlab.fixtures import load_topology, scenario_names, topology_names
    from netlab.topology.file import load_topology_file

    path = Path(text)
    if path.is_file():
        if _is_scenario(path):
            return _scenario(path)
        return load_topology_file(path), [], ""
    if text in topology_names():
        return load_topology(text), [], ""
    if text in scenario_names():
        return _scenario(text)
    raise FixtureNotFoundError(
        f"no topology or scenario file {text!r}; shipped topologies: {topology_names()}; "
        f"shipped scenarios: {scenario_names()}"
    )


def cmd_graph(args: argparse.Namespace) -> int:
    topology, flows, name = _resolve(args.file)
    try:
        text = draw(topology, args.format, flows, name)
    except GraphvizMissingError as error:
        print(f"netlab: {error}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(text, end="")
    return 0


def register(commands: Commands) -> None:
    """Add graph."""
    graph = commands.add_parser(
        "graph", help="draw a topology or a scenario as Mermaid (GitHub renders it), Graphviz dot or SVG"
    )
    graph.add_argument(
        "file",
        metavar="FILE",
        help="a topology or scenario file, or a shipped name (seed, dual-stack, ..., or a scenario's)",
    )
    graph.add_argument(
        "--format",
        choices=FORMATS,
        default="mermaid",
        help="mermaid (default), dot, or svg (rendered by graphviz's dot)",
    )
    graph.set_defaults(handler=cmd_graph, after_interrupt="", needs_lab=False)
