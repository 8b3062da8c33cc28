"""pytest plugin (entry point `pytest11`): the `lab` fixture, the `privileged` marker and run directories.

Privileged tests skip off-root with a reason naming the missing capability. In CI (CI set) a missing
capability fails the test instead: a privileged test must never skip quietly there.

Each test using `lab` gets a run directory, RUNS/WORKER-TEST_ID, holding its process logs and one pcap per
node interface. It is removed when the test passes and kept when it fails; the failure report then ends
with a "netlab run directory" section naming it. RUNS is --netlab-runs, $NETLAB_RUNS or /tmp/netlab-runs.
"""

import os
import re
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from netlab.lab import registry
from netlab.lab.lab import Lab
from netlab.lab.privileges import missing_reason
from netlab.lab.runs import default_runs_dir

RUN_DIR = pytest.StashKey[Path]()
FAILED = pytest.StashKey[bool]()
SECTION = "netlab run directory"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--netlab-runs",
        default=None,
        help="where failing lab tests keep their logs and pcaps (default $NETLAB_RUNS or /tmp/netlab-runs)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "privileged: needs CAP_NET_ADMIN and CAP_SYS_ADMIN to build network namespaces"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    # Labs of a killed earlier run are reaped before this run makes its own; a worker-only run does it too.
    if missing_reason() is None:
        registry.reap_stale()


def require_privileges() -> None:
    """Skip (or in CI fail) the current test when the lab's capabilities are missing."""
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"privileged test cannot run in CI: {reason}")
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None:
        require_privileges()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, object]:
    report = yield
    assert isinstance(report, pytest.TestReport)
    run_dir = item.stash.get(RUN_DIR, None)
    if report.failed and run_dir is not None:
        item.stash[FAILED] = True
        text = f"logs and captures of this test are kept in {run_dir}"
        if report.when == "teardown" and not run_dir.exists():
            text = f"the lab's teardown failed after {run_dir} was removed"
        addsection = getattr(report.longrepr, "addsection", None)
        if callable(addsection):  # shown with the traceback, even with --show-capture=no
            addsection(SECTION, text)
        else:
            report.sections.append((SECTION, text))
    return report


def runs_dir(config: pytest.Config) -> Path:
    """The directory that holds the run directories of failed tests."""
    chosen = config.getoption("--netlab-runs")
    return Path(chosen) if chosen else default_runs_dir()


def run_dir_name(nodeid: str, worker: str | None = None) -> str:
    """WORKER-TEST_ID with every character a file name should not hold replaced by '_'."""
    worker = worker or os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{worker}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', nodeid)[-150:]}"


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """An empty lab (build it with `lab.build(topology)`) that captures every interface, torn down after
    the test, pass or fail; its run directory is kept only if the test failed."""
    require_privileges()
    run_dir = runs_dir(request.config) / run_dir_name(request.node.nodeid)
    shutil.rmtree(run_dir, ignore_errors=True)  # a previous run's leftovers of the same test
    request.node.stash[RUN_DIR] = run_dir
    with Lab(workdir=run_dir, capture=True, description=request.node.nodeid) as running:
        yield running
    if not request.node.stash.get(FAILED, False):
        shutil.rmtree(run_dir, ignore_errors=True)
