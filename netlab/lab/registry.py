"""A record of every live lab in /run/netlab, written before its first namespace exists, so a lab whose
owner died (kill -9) can be found and reaped by the next run or by `netlab down --stale`. An `nl-`
namespace no record names is never reaped: `netlab ls` lists it and `netlab down --orphans` removes it.

A test session keeps its labs in a registry of its own, /run/netlab/suites/PID-START (pytest_plugin), so
that two suites, and a developer's labs, never see each other's.
"""

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from netlab.errors import UsageError
from netlab.lab import netns
from netlab.lab.names import PREFIX

DEFAULT_REGISTRY = Path("/run/netlab")
REGISTRY_DIR = Path(os.environ.get("NETLAB_REGISTRY", DEFAULT_REGISTRY))
SUITES = DEFAULT_REGISTRY / "suites"


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return int(text.rpartition(")")[2].split()[19])


@dataclass
class LabRecord:
    """Who owns a lab and which namespaces belong to it."""

    lab_id: str
    owner_pid: int
    owner_start: int | None
    namespaces: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    description: str = ""
    # A lab made by `netlab up` outlives its creator on purpose; only `netlab down` removes it.
    detached: bool = False

    @property
    def path(self) -> Path:
        return REGISTRY_DIR / f"{self.lab_id}.json"

    def owner_alive(self) -> bool:
        if self.detached:
            return True
        return process_start_time(self.owner_pid) == self.owner_start

    def save(self) -> None:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self)))
        temporary.replace(self.path)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(FileNotFoundError):
            topology_file(self.lab_id).unlink()


def topology_file(lab_id: str) -> Path:
    """Where `netlab up` keeps a copy of a detached lab's topology, so later commands know its nodes."""
    return REGISTRY_DIR / f"{lab_id}.topology.toml"


_RECORD_FIELDS = tuple(LabRecord.__dataclass_fields__)


def new_record(lab_id: str, description: str = "") -> LabRecord:
    pid = os.getpid()
    return LabRecord(lab_id, pid, process_start_time(pid), description=description)


def load_records(directory: Path | None = None) -> list[LabRecord]:
    """The records in `directory` (this process's registry by default)."""
    records: list[LabRecord] = []
    directory = directory or REGISTRY_DIR
    if not directory.is_dir():
        return records
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            # Fields this version does not know (a newer checkout wrote the record) are ignored rather than
            # dropping the record: an unread record would leave its live namespaces looking unclaimed.
            records.append(LabRecord(**{key: data[key] for key in _RECORD_FIELDS if key in data}))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return records


def kill_processes_in(namespace: str, deadline: float = 5.0) -> None:
    """SIGKILL every process inside `namespace` and wait until they are gone."""
    end = time.monotonic() + deadline
    while True:
        pids = netns.pids_in(namespace)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > end:
            return
        time.sleep(0.01)


def destroy_namespace(namespace: str) -> None:
    """Kill what runs in `namespace`, then remove it; quiet if it is already gone."""
    if not netns.exists(namespace):
        return
    kill_processes_in(namespace)
    with contextlib.suppress(FileNotFoundError):
        netns.remove(namespace)


# Temporary directories of a lab live in a separate file, LAB_ID.scratch, with the owner's identity: the
# LAB_ID.json schema stays as it is, since every checkout on a machine reads the same registry, and a
# reader that cannot parse a record treats its namespaces as unclaimed.
@dataclass
class ScratchRecord:
    """Temporary directories (workdir, socket directory) a lab made, to be removed if its owner dies."""

    lab_id: str
    owner_pid: int
    owner_start: int | None
    directories: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return REGISTRY_DIR / f"{self.lab_id}.scratch"

    def add(self, directory: Path) -> None:
        self.directories.append(str(directory))
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".scratch-tmp")
        temporary.write_text(json.dumps(asdict(self)))
        temporary.replace(self.path)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def new_scratch(lab_id: str) -> ScratchRecord:
    pid = os.getpid()
    return ScratchRecord(lab_id, pid, process_start_time(pid))


def remove_scratch(directory: str) -> None:
    """Remove a lab's temporary directory; anything not shaped like one (a damaged record) is left alone."""
    path = Path(directory)
    if path.parent == Path(tempfile.gettempdir()) and path.name.startswith(("netlab-", PREFIX)):
        shutil.rmtree(path, ignore_errors=True)


def reap_stale_scratch() -> None:
    """Remove the temporary directories of labs whose owner is gone."""
    if not REGISTRY_DIR.is_dir():
        return
    for path in REGISTRY_DIR.glob("*.scratch"):
        try:
            record = ScratchRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if process_start_time(record.owner_pid) == record.owner_start:
            continue
        for directory in record.directories:
            remove_scratch(directory)
        record.delete()


@contextlib.contextmanager
def registry_at(directory: Path) -> Iterator[None]:
    """Use the registry in `directory` for the block (a test session's own, or one being reaped)."""
    global REGISTRY_DIR
    previous, REGISTRY_DIR = REGISTRY_DIR, directory
    try:
        yield
    finally:
        REGISTRY_DIR = previous


def suite_namespaces() -> set[str]:
    """Every namespace a test session's registry names: the session's own reapers judge them."""
    directories = [path for path in SUITES.iterdir() if path.is_dir()] if SUITES.is_dir() else []
    return {name for path in directories for record in load_records(path) for name in record.namespaces}


def reap_stale(*, detached_too: bool = False) -> list[str]:
    """Remove the labs whose record names a dead owner; return the namespaces removed.

    Only what a record names is judged: an `nl-` namespace no record claims (a lab built by hand, another
    tool's) is left alone, listed by orphans() and removed only by remove_orphans() (`netlab down
    --orphans`). `detached_too` also removes labs made by `netlab up` once their maker is gone: for a test
    session's registry after the session ended, whose `up` labs were that session's alone.
    """
    removed: list[str] = []
    for record in load_records():
        if detached_too:
            record.detached = False  # judged by whether its maker lives, like any other lab
        if record.owner_alive():
            continue
        for namespace in record.namespaces:
            if netns.exists(namespace):
                destroy_namespace(namespace)
                removed.append(namespace)
        record.delete()
    reap_stale_scratch()
    return removed


def orphans() -> list[str]:
    """The `nl-` namespaces no record names: not in this process's registry, the machine's one, or any test
    session's. They may be a lab someone built by hand or with their own registry, so nothing removes them
    unless asked (remove_orphans)."""
    # List namespaces before reading records: a lab writes its record before creating a namespace, so a
    # namespace seen here that belongs to a lab is named by a record read afterwards.
    existing = [name for name in netns.list_names() if name.startswith(PREFIX)]
    recorded = suite_namespaces()
    for directory in {REGISTRY_DIR, DEFAULT_REGISTRY}:
        recorded.update(name for record in load_records(directory) for name in record.namespaces)
    return sorted(name for name in existing if name not in recorded)


def remove_orphans(names: Iterable[str] | None = None) -> list[str]:
    """Remove the unrecorded `nl-` namespaces (only those of `names`, when given) and what runs in them;
    return what was removed. A name that is recorded, or not an `nl-` namespace, is refused."""
    unrecorded = orphans()
    chosen = unrecorded if names is None else list(names)
    for name in chosen:
        if name not in unrecorded:
            raise UsageError(
                f"{name!r} is not an unrecorded {PREFIX} namespace; "
                f"unrecorded: {' '.join(unrecorded) or 'none'}"
            )
    for name in chosen:
        destroy_namespace(name)
    return chosen
