"""Labs that outlive the command that made them (`netlab up`), and finding a lab by id for the commands
that work on one (`exec`, `shell`, `send`, `sniff`, `doctor --lab`, `down`).

A detached lab is an ordinary registry record with `detached` set, plus a copy of its topology file next
to it, so a later process knows the lab's nodes (and their roles) without the process that built it.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from netlab.errors import FixtureNotFoundError, NetlabError, UnknownLabError, UsageError
from netlab.fixtures import topology_names, topology_path
from netlab.lab import registry
from netlab.lab.lab import Lab
from netlab.topology.file import load_topology_file
from netlab.topology.model import Topology


def resolve_topology_file(file_or_name: str) -> Path:
    """An existing file path as given, else the shipped topology of that name (e.g. 'seed')."""
    path = Path(file_or_name)
    if path.is_file():
        return path
    if file_or_name not in topology_names():
        raise FixtureNotFoundError(
            f"no topology file {file_or_name!r}; shipped topologies: {topology_names()}"
        )
    return topology_path(file_or_name)


def load_for_up(file_or_name: str) -> tuple[Path, Topology]:
    """The topology file `file_or_name` names and its validated topology (no privilege needed): a bad
    argument is reported before the privilege check, as `netlab run` does."""
    path = resolve_topology_file(file_or_name)
    return path, load_topology_file(path)


def up(file_or_name: str | tuple[Path, Topology]) -> str:
    """Build the topology (a file or shipped name, or what load_for_up returned) in a new lab that stays
    after this process exits; return the lab's id."""
    path, topology = load_for_up(file_or_name) if isinstance(file_or_name, str) else file_or_name
    with Lab(description=f"netlab up {path}") as lab:
        lab.build(topology)
        registry.topology_file(lab.lab_id).write_text(path.read_text())
        lab.detach()
        return lab.lab_id


def live_records() -> list[registry.LabRecord]:
    """Every lab in the registry whose owner is alive or which is detached."""
    return [record for record in registry.load_records() if record.owner_alive()]


def _describe(records: list[registry.LabRecord]) -> str:
    return ", ".join(record.lab_id for record in records) or "none"


def find(lab_id: str | None) -> registry.LabRecord:
    """The lab `lab_id`; without an id, the one lab that is up (made by `netlab up`)."""
    records = registry.load_records()
    if lab_id is not None:
        for record in records:
            if record.lab_id == lab_id:
                return record
        raise UnknownLabError(f"no lab {lab_id!r}; labs: {_describe(records)}")
    detached = [record for record in records if record.detached]
    if not detached:
        raise UnknownLabError("no lab is up: start one with `netlab up FILE` (or name one with --lab)")
    if len(detached) > 1:
        raise UsageError(f"{len(detached)} labs are up ({_describe(detached)}): choose one with --lab ID")
    return detached[0]


def topology_of(record: registry.LabRecord) -> Topology:
    """The topology a detached lab was built from."""
    path = registry.topology_file(record.lab_id)
    if not path.is_file():
        raise UnknownLabError(
            f"lab {record.lab_id!r} was not made by `netlab up` (owner pid {record.owner_pid}): "
            "its nodes are known only to its owner"
        )
    return load_topology_file(path)


@contextlib.contextmanager
def attach(lab_id: str | None) -> Iterator[tuple[Lab, Topology]]:
    """A handle on lab `lab_id` (or the one lab up) and its topology; stops what it started on exit."""
    record = find(lab_id)
    topology = topology_of(record)
    with Lab.attached(record.lab_id, list(topology.nodes), description=f"attached to {record.lab_id}") as lab:
        yield lab, topology


def down(lab_id: str) -> list[str]:
    """Remove lab `lab_id` (kill its processes, delete its namespaces and record); return the namespaces.

    A lab whose owner process is alive belongs to that process (a test, `netlab demo`): it is refused.
    """
    record = find(lab_id)
    if not record.detached and record.owner_alive():
        raise NetlabError(
            f"lab {lab_id!r} belongs to running process {record.owner_pid}, which removes it when it "
            "ends: stop that process instead"
        )
    for namespace in record.namespaces:
        registry.destroy_namespace(namespace)
    record.delete()
    return list(record.namespaces)


__all__ = ["attach", "down", "find", "live_records", "resolve_topology_file", "topology_of", "up"]
