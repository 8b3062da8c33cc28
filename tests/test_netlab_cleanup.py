"""A lab removes everything it made: on success, on an exception, and after its owner is killed."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from netlab import Lab, Process
from netlab.cli.doctor import orphans_note
from netlab.cli.main import main
from netlab.lab import netns, registry
from netlab.lab.capture import read_pcap
from netlab.lab.names import new_lab_id
from netlab.lab.process import python_env
from netlab.lab.tproxy import MARK_BASE, TABLE_PREFIX
from netlab.lab.wait import wait_until
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged


def test_lab_removes_its_namespaces_and_processes_when_the_body_raises() -> None:
    namespaces: list[str] = []
    processes: list[Process] = []

    def build_then_fail() -> None:
        with Lab() as lab:
            lab.build(seed_deployment())
            namespaces.extend(node.namespace for node in lab.nodes.values())
            processes.append(lab["backend"].run(["sleep", "60"]))
            assert all(netns.exists(name) for name in namespaces)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_then_fail()
    assert not any(netns.exists(name) for name in namespaces)
    assert processes[0].returncode is not None


def test_a_killed_owner_leaves_only_stale_namespaces_and_processes_that_the_next_run_reaps() -> None:
    # The owner builds a lab and starts a process in every node (each in its own session, so they
    # outlive their parent), prints what it made, then is killed with SIGKILL: no cleanup code runs.
    script = textwrap.dedent(
        """
        import sys, time
        from netlab import Lab
        from netlab.topology.shipped import seed_deployment
        lab = Lab().__enter__()
        lab.build(seed_deployment())
        processes = [node.run(["sleep", "300"]) for node in lab.nodes.values()]
        print(" ".join(node.namespace for node in lab.nodes.values()), flush=True)
        print(" ".join(str(process.pid) for process in processes), flush=True)
        print(lab.socket_dir, lab.workdir, flush=True)
        time.sleep(300)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=python_env()
    )
    try:
        assert owner.stdout is not None
        namespaces = owner.stdout.readline().split()
        pids = [int(pid) for pid in owner.stdout.readline().split()]
        scratch = [Path(directory) for directory in owner.stdout.readline().split()]
        assert all(directory.is_dir() for directory in scratch)
        assert len(namespaces) == len(pids) == 3
        assert all(netns.exists(name) for name in namespaces)
        # Each process enters its node (nsenter) just after it starts: wait for that, not for a moment.
        wait_until(
            lambda: all(pid in netns.pids_in(name) for pid, name in zip(pids, namespaces, strict=True)),
            "every process to be inside its node",
            10,
        )
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    # What is left: the namespaces, the processes inside them, and a record whose owner is dead.
    assert any(netns.exists(name) for name in namespaces) or not alive(pids)  # another worker may reap first
    registry.reap_stale()
    assert not any(netns.exists(name) for name in namespaces)
    assert not alive(pids)
    assert not any(directory.exists() for directory in scratch)
    assert not [record for record in registry.load_records() if set(record.namespaces) & set(namespaces)]


@pytest.fixture
def orphan(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real `nl-` namespace no registry names, as a lab built by hand would be, with a process in it;
    removed afterwards if the test left it. Only it and recorded labs are seen as existing: removing every
    unrecorded namespace for real would take those of other tools (and other tests) on this machine."""
    name = f"nl-byhand{os.getpid()}-{new_lab_id()}"
    real = netns.list_names
    monkeypatch.setattr(
        netns, "list_names", lambda: [n for n in real() if n == name or not n.startswith("nl-")]
    )
    netns.create(name)
    try:
        yield name
    finally:
        registry.destroy_namespace(name)


def test_an_unrecorded_nl_namespace_survives_a_reap_by_every_registry(orphan: str, tmp_path: Path) -> None:
    sleeper = Process(["sleep", "60"], namespace=orphan, log_path=tmp_path / "sleep.log")
    try:
        wait_until(lambda: sleeper.pid in netns.pids_in(orphan), "the process to be inside the namespace", 10)
        for directory in (registry.REGISTRY_DIR, registry.DEFAULT_REGISTRY):
            with registry.registry_at(directory):
                assert orphan not in registry.reap_stale()
            assert netns.exists(orphan)
        with Lab():  # a lab reaps when it starts
            pass
        assert netns.exists(orphan)
        assert sleeper.returncode is None
    finally:
        sleeper.stop()


def test_an_unrecorded_nl_namespace_is_listed_by_ls_and_doctor_and_removed_by_down_orphans(
    orphan: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ls"]) == 0
    assert f"{orphan}  unrecorded" in capsys.readouterr().out
    assert main(["ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"id": None, "state": "unrecorded", "namespaces": [orphan]} in listed
    assert orphan in orphans_note()

    assert main(["down", "--orphans", orphan]) == 0
    assert capsys.readouterr().out == f"removed 1 namespaces: {orphan}\n"
    assert not netns.exists(orphan)


def test_down_orphans_without_names_removes_every_unrecorded_one_and_no_recorded_one(
    orphan: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Lab() as lab:
        lab.build(seed_deployment())
        recorded = [node.namespace for node in lab.nodes.values()]
        monkeypatch.setattr(netns, "list_names", lambda: [orphan, *recorded])
        assert main(["down", "--orphans", recorded[0]]) == 64  # recorded: refused, naming it
        assert repr(recorded[0]) in capsys.readouterr().err

        assert main(["down", "--orphans"]) == 0

        assert not netns.exists(orphan)
        assert all(netns.exists(name) for name in recorded)


def alive(pids: list[int]) -> list[int]:
    """The pids that still run (zombies do not count: they hold no namespace)."""
    running = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            continue
        if state != "Z":
            running.append(pid)
    return running


def test_a_record_with_fields_from_a_newer_checkout_still_claims_its_namespaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "REGISTRY_DIR", tmp_path)
    record = registry.new_record("abc123")
    record.namespaces.append("nl-abc123-host")
    record.save()
    data = json.loads(record.path.read_text())
    record.path.write_text(json.dumps({**data, "added_later": [1, 2]}))

    (loaded,) = registry.load_records()

    assert loaded.namespaces == ["nl-abc123-host"]
    assert loaded.owner_alive()


def test_a_forked_child_unwinding_the_lab_leaves_it_to_its_owner(lab: Lab) -> None:
    # pyroute2 forks helpers; one stopped with SIGTERM, or hit by Ctrl-C, unwinds the parent's stack too.
    lab.build(seed_deployment())
    child = os.fork()
    if child == 0:
        try:
            lab.close()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    assert all(netns.exists(node.namespace) for node in lab.nodes.values())


def test_a_node_destroyed_mid_test_takes_its_links_along_and_the_lab_still_closes_cleanly(lab: Lab) -> None:
    lab.build(seed_deployment())
    namespace = lab["backend"].namespace
    lab["backend"].udp_socket("192.0.2.2", 27000).close()  # a socket the test opened, closed first
    marker = b"sent-before-the-backend-went-away"
    lab["host"].send_fast(dst="192.0.2.2", dport=27000, payloads=[marker])

    lab.destroy_node("backend")  # the lab records every interface: those captures must let go of it

    assert not netns.exists(namespace)
    wait_until(
        lambda: "to-backend" not in lab["host"].check(["ip", "-br", "link"]), "the host's end to go", 10
    )
    # The backend's capture was finished, not cut off: what it saw before it went is in its file.
    frames = read_pcap(lab.workdir / "captures" / "backend-to-host.pcap")
    assert [frame for frame in frames if marker in frame]


def root_steering() -> tuple[list[str], list[int]]:
    """This (root) namespace's netlab tproxy tables and the marks of its fwmark rules in netlab's range."""
    listed = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    tables = [line for line in listed.splitlines() if TABLE_PREFIX in line]
    with IPRoute() as ipr:
        marks = [
            int(rule.get_attr("FRA_FWMARK"))
            for family in (socket.AF_INET, socket.AF_INET6)
            for rule in ipr.get_rules(family=family)
            if (rule.get_attr("FRA_FWMARK") or 0) & 0xFFFF0000 == MARK_BASE
        ]
    return tables, marks


def test_a_killed_owner_of_a_lab_with_tproxy_steering_is_reaped_with_nothing_left_behind() -> None:
    # The steering (nft table, fwmark rule, local route) lives in the lab's host namespace: the reaper
    # removes it with the namespace, and nothing of it was ever made in this one.
    script = textwrap.dedent(
        """
        import time
        from netlab import Lab
        from netlab.lab.tproxy import steer, transparent_socket
        from netlab.service.relay import install_relay_tproxy
        from netlab.topology.shipped import dual_stack
        lab = Lab().__enter__()
        lab.build(dual_stack())
        host = lab["host"]
        steer(host, version=4, to_port=27000, daddr="198.51.100.1", dports=(27000, 27099))
        install_relay_tproxy(host, "2001:db8:2::2", 5353, 40000)
        transparent_socket(host, 6, 40000)
        print(" ".join(node.namespace for node in lab.nodes.values()), host.namespace, flush=True)
        time.sleep(300)
        """
    )
    before = root_steering()
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=python_env()
    )
    try:
        assert owner.stdout is not None
        *namespaces, host = owner.stdout.readline().split()
        tables = netns.run_in(
            host,
            lambda: (
                subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
            ),
        )
        assert tables.count(TABLE_PREFIX) == 2
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    registry.reap_stale()
    assert not any(netns.exists(name) for name in namespaces)
    assert root_steering() == before == ([], [])
