"""Two test sessions on one machine never disturb each other, nor labs made outside them: each session
keeps its labs in a registry of its own under /run/netlab/suites, reaps only there (its own labs once it
ends, and the labs of sessions that were killed), and a machine-wide reaper leaves the sessions' labs alone.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab.lab import netns, registry
from netlab.lab.names import new_lab_id
from netlab.lab.process import python_env
from netlab.pytest_plugin import reap_ended_session, reap_killed_sessions

PLAIN_TEST = "def test_nothing():\n    pass\n"
LAB_TEST = "import pytest\n\n@pytest.mark.privileged\ndef test_nothing():\n    pass\n"


def dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def write_record(directory: Path, namespaces: list[str], *, owner_pid: int, detached: bool = False) -> Path:
    """A lab record in the registry `directory`, as a lab writes it before it makes its namespaces."""
    with registry.registry_at(directory):
        record = registry.new_record(new_lab_id(), "written by a test")
        # A gone owner's start time cannot be read any more: any number stands for the one it had.
        record.owner_pid, record.owner_start = owner_pid, registry.process_start_time(owner_pid) or 1
        record.namespaces, record.detached = namespaces, detached
        record.save()
        return record.path


@pytest.fixture
def suites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private root for the sessions' registries, in place of /run/netlab/suites."""
    root = tmp_path / "suites"
    root.mkdir()
    monkeypatch.setattr(registry, "SUITES", root)
    return root


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """Names for real namespaces the test makes; whatever of them is left is removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        registry.destroy_namespace(name)


def test_the_session_has_a_registry_of_its_own_that_every_process_of_a_test_inherits() -> None:
    directory = registry.REGISTRY_DIR
    assert directory.parent == registry.SUITES
    assert os.environ["NETLAB_REGISTRY"] == str(directory)
    # Named after the process that started the session: this one, or the xdist controller above a worker.
    starter = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
    assert directory.name == f"{starter}-{registry.process_start_time(starter)}"
    child = subprocess.run(
        [sys.executable, "-c", "from netlab.lab import registry; print(registry.REGISTRY_DIR)"],
        env=python_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert child.stdout.strip() == str(directory)


@pytest.mark.privileged
def test_an_ended_session_removes_its_labs_whose_owner_is_gone_then_its_registry(
    namespaces: list[str],
) -> None:
    # Under the real root, so that no reaper on the machine takes these namespaces for unclaimed ones; a
    # name that is no PID-START is no session any other run would reap.
    directory = registry.SUITES / f"test-{new_lab_id()}"
    left_up, still_running = f"nl-{new_lab_id()}-up", f"nl-{new_lab_id()}-live"
    namespaces += [left_up, still_running]
    try:
        write_record(directory, [left_up], owner_pid=dead_pid(), detached=True)  # a `netlab up` left behind
        running = write_record(directory, [still_running], owner_pid=os.getpid())
        for name in namespaces:
            netns.create(name)

        assert reap_ended_session(directory) == [left_up]
        assert not netns.exists(left_up)
        assert netns.exists(still_running)
        assert [path.name for path in directory.glob("*.json")] == [running.name]

        running.unlink()
        assert reap_ended_session(directory) == []
        assert not directory.exists()
    finally:
        registry.destroy_namespace(still_running)
        with registry.registry_at(directory):
            for record in registry.load_records():
                record.delete()
        if directory.is_dir():
            for path in directory.iterdir():
                path.unlink()
            directory.rmdir()


def test_only_killed_sessions_are_reaped_and_of_them_only_labs_whose_owner_is_gone(suites: Path) -> None:
    gone = dead_pid()
    killed = suites / f"{gone}-1234"
    killed_leftovers = [
        write_record(killed, ["nl-nowhere-a"], owner_pid=gone),
        write_record(killed, ["nl-nowhere-b"], owner_pid=gone, detached=True),
    ]
    killed_with_a_survivor = suites / f"{gone}-5678"
    survivor = write_record(killed_with_a_survivor, ["nl-nowhere-c"], owner_pid=os.getpid())
    running = suites / f"{os.getpid()}-{registry.process_start_time(os.getpid())}"
    running_leftover = write_record(running, ["nl-nowhere-d"], owner_pid=gone)

    reap_killed_sessions()

    assert not killed.exists()
    assert not any(path.exists() for path in killed_leftovers)
    assert survivor.exists()
    assert running_leftover.exists()  # a live session's own: it reaps that itself


def test_unrecorded_namespaces_are_those_no_registry_names_the_sessions_included(
    suites: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Which namespaces exist is a stand-in here: the real list holds every other lab on this machine.
    write_record(suites / "4242-1", ["nl-session-host"], owner_pid=os.getpid())
    default = tmp_path / "default"
    write_record(default, ["nl-machine-host"], owner_pid=os.getpid())
    monkeypatch.setattr(registry, "DEFAULT_REGISTRY", default)
    monkeypatch.setattr(registry, "REGISTRY_DIR", default)
    names = ["nl-session-host", "nl-machine-host", "nl-by-hand", "other"]
    monkeypatch.setattr(netns, "list_names", lambda: names)

    assert registry.orphans() == ["nl-by-hand"]


@pytest.mark.privileged
@pytest.mark.parametrize(("test_file", "reaps"), [(PLAIN_TEST, False), (LAB_TEST, True)])
def test_only_a_session_with_lab_tests_reaps_killed_sessions(
    pytester: pytest.Pytester, suites: Path, test_file: str, reaps: bool
) -> None:
    # The plugin loads in every pytest run once netlab is installed: one with no lab test touches nothing.
    gone = dead_pid()
    leftover = write_record(suites / f"{gone}-1", ["nl-nowhere-e"], owner_pid=gone)
    pytester.makepyfile(test_inner=test_file)

    result = pytester.runpytest(
        "-p",
        "netlab.pytest_plugin",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
    )

    result.assert_outcomes(passed=1)
    assert leftover.exists() != reaps


def run_inner_pytest_unprivileged(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest on `directory` with CI=true and without the lab's capabilities (dropped when root)."""
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*drop, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        env={**python_env(), "CI": "true"},
        timeout=120,
        check=False,
    )


def test_in_ci_without_capabilities_a_privileged_test_fails_in_one_line_naming_the_fix(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_inner=LAB_TEST + "\n\ndef test_plain():\n    pass\n")

    result = run_inner_pytest_unprivileged(pytester.path)

    assert result.returncode == 1, result.stdout
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR test_inner.py")]
    assert len(errors) == 1, result.stdout
    assert "needs CAP_NET_ADMIN" in errors[0]
    assert "run as root" in errors[0]
    assert '-m "not privileged"' in errors[0]
    assert "Traceback" not in result.stdout
    assert "pytest_plugin.py" not in result.stdout
    assert "1 passed, 1 error" in result.stdout


def test_in_ci_without_capabilities_the_unprivileged_part_passes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=LAB_TEST + "\n\ndef test_plain():\n    pass\n")

    result = run_inner_pytest_unprivileged(pytester.path, "-m", "not privileged")

    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 deselected" in result.stdout
