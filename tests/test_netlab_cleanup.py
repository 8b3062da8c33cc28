"""A lab removes everything it made: on success, on an exception, and after its owner is killed."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from netlab import Lab, Process, netns, registry
from netlab.lab import python_env
from netlab.topologies import seed_deployment

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


def test_namespaces_of_a_killed_owner_are_reaped_by_the_next_run() -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from netlab import Lab
        from netlab.topologies import seed_deployment
        lab = Lab().__enter__()
        lab.build(seed_deployment())
        print(" ".join(node.namespace for node in lab.nodes.values()), flush=True)
        time.sleep(60)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=python_env()
    )
    try:
        assert owner.stdout is not None
        namespaces = owner.stdout.readline().split()
        assert namespaces
        assert all(netns.exists(name) for name in namespaces)
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    registry.reap_stale()  # another worker's lab may reap them first: either way they must be gone
    assert not any(netns.exists(name) for name in namespaces)


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
