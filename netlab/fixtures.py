"""The one way to read test data: files under the checkout's `fixtures/` directory (or $NETLAB_FIXTURES).

Topologies live in `fixtures/topologies/NAME.toml`, scenarios in `fixtures/scenarios/NAME.toml`; tests and the
library name them, never a path. A topology file may sit next to the scenarios that name it: it is told
apart by its tables (`nodes`, `links`, ... and no `topology`), and is not a scenario.
"""

import os
import tomllib
from pathlib import Path

from netlab.errors import FixtureNotFoundError
from netlab.topology.model import Topology


def fixtures_dir() -> Path:
    """The fixtures directory: $NETLAB_FIXTURES, else the checkout's `fixtures/` next to the netlab package,
    else the copy an installed wheel carries as `netlab/_fixtures`."""
    override = os.environ.get("NETLAB_FIXTURES")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent
    checkout = package.parent / "fixtures"
    return checkout if checkout.is_dir() else package / "_fixtures"


def fixture_path(kind: str, name: str, suffix: str = ".toml") -> Path:
    """The path of fixture `name` of `kind` ('topologies', 'scenarios', ...); raises if it does not exist."""
    directory = fixtures_dir() / kind
    path = directory / (name if name.endswith(suffix) else name + suffix)
    if not path.is_file():
        known = sorted(item.stem for item in directory.glob(f"*{suffix}")) if directory.is_dir() else []
        raise FixtureNotFoundError(f"no {kind} fixture {name!r} in {directory}; known: {known}")
    return path


def topology_path(name: str) -> Path:
    """The file of the shipped topology `name` (e.g. 'seed', 'seed-ipv6', 'dual-stack')."""
    return fixture_path("topologies", name)


def topology_names() -> list[str]:
    """Names of every shipped topology file."""
    return sorted(path.stem for path in (fixtures_dir() / "topologies").glob("*.toml"))


def load_topology(name: str) -> Topology:
    """Read and validate the shipped topology `name`."""
    from netlab.topology.file import load_topology_file

    return load_topology_file(topology_path(name))


def scenario_path(name: str) -> Path:
    """The file of the shipped scenario `name` (fixtures/scenarios/NAME.toml); FixtureNotFoundError listing
    the shipped scenarios when there is none (a topology kept next to the scenarios is none)."""
    path = _scenario_file(name)
    if not path.is_file() or is_topology_file(path):
        raise missing_scenario(name)
    return path


def missing_scenario(name: str, file_too: bool = False) -> FixtureNotFoundError:
    """The error for `name`, which is no shipped scenario (`file_too`: nor a file, for `netlab run`, which
    takes either): it lists the shipped ones, and says so when `name` is a topology kept next to them."""
    if file_too:
        what = f"no scenario file {name!r}, and no shipped scenario of that name"
    else:
        what = f"no shipped scenario {name!r}"
    path = _scenario_file(name)
    what += f" in {path.parent}"
    if path.is_file():
        what += f" ({path.name} there is a topology that scenarios use)"
    return FixtureNotFoundError(f"{what}; shipped scenarios: {scenario_names()}")


def _scenario_file(name: str) -> Path:
    return fixtures_dir() / "scenarios" / (name if name.endswith(".toml") else name + ".toml")


TOPOLOGY_TABLES = frozenset({"nodes", "devices", "links", "routes", "roles"})


def is_topology_file(path: Path) -> bool:
    """Whether the TOML file at `path` is a topology (its tables are a topology's and it names none), not a
    scenario. A file that does not parse counts as a scenario, so that loading it reports the error."""
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False
    return "topology" not in data and bool(TOPOLOGY_TABLES & set(data))


def scenario_names() -> list[str]:
    """Names of every shipped scenario file: each one is a test (tests/test_scenarios.py). Topology files
    kept next to the scenarios that use them are left out."""
    directory = fixtures_dir() / "scenarios"
    return sorted(path.stem for path in directory.glob("*.toml") if not is_topology_file(path))
