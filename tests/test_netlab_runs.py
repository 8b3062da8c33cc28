"""Failed runs' directories under RUNS are pruned: the newest NETLAB_RUNS_KEEP kept ones stay, older kept
ones go, and nothing that was not kept (a run in progress, another session's, a stranger) is touched."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from netlab.lab.process import python_env
from netlab.lab.runs import KEEP_DEFAULT, KEPT_MARK, keep_failed_run, kept_runs_limit

FAILING_LAB_TEST = "def test_fails(lab):\n    assert False\n"


def kept_run(runs: Path, name: str, age: int) -> Path:
    """A run directory kept `age` seconds ago."""
    directory = runs / name
    directory.mkdir()
    (directory / KEPT_MARK).write_text("")
    when = 1_000_000_000 - age
    os.utime(directory / KEPT_MARK, (when, when))
    return directory


def test_keeping_a_failed_run_removes_the_oldest_kept_runs_beyond_the_limit(tmp_path: Path) -> None:
    old = [kept_run(tmp_path, f"old-{age}", age) for age in (50, 40, 30)]
    in_progress = tmp_path / "a-run-in-progress"
    in_progress.mkdir()
    stranger = tmp_path / "not-a-run.txt"
    stranger.write_text("")
    newest = tmp_path / "newest"
    newest.mkdir()

    removed = keep_failed_run(newest, keep=2)

    assert sorted(removed) == sorted(old[:2])
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["old-30", "newest", "a-run-in-progress", "not-a-run.txt"]
    )


def test_a_limit_of_0_keeps_every_failed_run(tmp_path: Path) -> None:
    old = [kept_run(tmp_path, f"old-{age}", age) for age in range(30)]
    (tmp_path / "newest").mkdir()
    assert keep_failed_run(tmp_path / "newest", keep=0) == []
    assert all(path.is_dir() for path in old)


def test_the_limit_is_netlab_runs_keep_else_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NETLAB_RUNS_KEEP", raising=False)
    assert kept_runs_limit() == KEEP_DEFAULT
    monkeypatch.setenv("NETLAB_RUNS_KEEP", "3")
    assert kept_runs_limit() == 3


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["-m", "pytest", "-p", "no:cacheprovider"], 4),  # pytest's usage error
        (["-m", "netlab", "run", "zero-length-datagram"], 64),
    ],
)
def test_a_bad_netlab_runs_keep_is_a_usage_error_naming_it(
    command: list[str], code: int, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path,
        env={**python_env(), "NETLAB_RUNS_KEEP": "many"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == code, result.stderr
    assert "NETLAB_RUNS_KEEP='many': expected how many failed runs to keep" in result.stderr


@pytest.mark.privileged
def test_a_session_keeps_only_the_newest_failed_runs(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("NETLAB_RUNS_KEEP", "2")
    pytester.makepyfile(test_inner=FAILING_LAB_TEST)
    for _ in range(3):
        result = pytester.runpytest(
            "-p",
            "netlab.pytest_plugin",
            "-p",
            "no:cacheprovider",
            f"--netlab-runs={runs}",
            "-W",
            "ignore::pytest.PytestAssertRewriteWarning",
        )
        result.assert_outcomes(failed=1)
    kept = sorted(runs.iterdir(), key=lambda path: (path / KEPT_MARK).stat().st_mtime_ns)
    assert len(kept) == 2
    last = result.stdout.str()
    assert f"logs and captures of this test are kept in {kept[-1]}" in last
