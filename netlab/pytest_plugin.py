"""pytest plugin (entry point `pytest11`): the `lab` fixture, the `privileged` marker and run directories.

Privileged tests skip off-root with a reason naming the missing capability. In CI (CI set) a missing
capability fails the test instead, in one line naming the fix: a privileged test must never skip quietly
there. `-m "not privileged"` selects only the unprivileged part.

Each test using `lab` gets a run directory of its own, RUNS/WORKER-TEST_ID-RANDOM, holding its process
logs and one pcap per node interface. It is removed when the test passes and kept when it fails; the
failure report then ends with a "netlab run directory" section naming it. RUNS is --netlab-runs,
$NETLAB_RUNS or /tmp/netlab-runs; it keeps the newest $NETLAB_RUNS_KEEP failed runs (default 20).

A session keeps its labs in a registry of its own, /run/netlab/suites/PID-START (PID: the process that
started the session; its xdist workers and every process a test starts inherit it through
$NETLAB_REGISTRY), so it never sees, reaps or removes a lab made outside it. At its end it removes what
its tests left behind; a session that collected lab tests first reaps the registries of sessions that
were killed.
"""

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from netlab.errors import UsageError
from netlab.lab import registry
from netlab.lab.lab import Lab
from netlab.lab.privileges import missing_reason
from netlab.lab.runs import default_runs_dir, keep_failed_run, kept_runs_limit

RUN_DIR = pytest.StashKey[Path]()
FAILED = pytest.StashKey[bool]()
SESSION_REGISTRY = pytest.StashKey[contextlib.ExitStack]()
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
    try:
        kept_runs_limit()  # a bad NETLAB_RUNS_KEEP is named now, not at the first failure
    except UsageError as error:
        raise pytest.UsageError(str(error)) from None
    if Path(os.environ.get("NETLAB_REGISTRY", "/")).parent == registry.SUITES:
        return  # an xdist worker, or pytest run by a test: the session's registry is already chosen
    pid = os.getpid()
    directory = registry.SUITES / f"{pid}-{registry.process_start_time(pid)}"
    stack = contextlib.ExitStack()
    stack.enter_context(registry.registry_at(directory))
    stack.enter_context(environment("NETLAB_REGISTRY", str(directory)))
    config.stash[SESSION_REGISTRY] = stack


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(SESSION_REGISTRY, None)
    if stack is None:
        return
    with stack:
        # Every test process is gone: what their labs left behind (a `netlab up` a test did not take down,
        # a lab of a test process killed mid-test) is this session's to remove.
        if registry.REGISTRY_DIR.is_dir() and missing_reason() is None:
            reap_ended_session(registry.REGISTRY_DIR)


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """Set $name for the block (for this process and every process it starts), then restore it."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def reap_ended_session(directory: Path) -> list[str]:
    """Remove the labs of a test session that has ended whose owner is gone, `netlab up` ones included
    (they were made for that session alone), then its registry once no lab is left in it. Labs whose owner
    still runs (a test process that outlived its session) are left, and so is the registry holding them."""
    with registry.registry_at(directory):
        removed = registry.reap_stale(detached_too=True)
        if not registry.load_records():
            shutil.rmtree(directory, ignore_errors=True)
    return removed


def session_owner_alive(directory: Path) -> bool:
    """Whether the process that started the session of registry SUITES/PID-START still runs."""
    pid, _, start = directory.name.partition("-")
    if not pid.isdigit():
        return True  # not a session's registry: not ours to judge
    return str(registry.process_start_time(int(pid))) == start


def reap_killed_sessions() -> list[str]:
    """Reap the registries of test sessions that were killed (their starting process is gone)."""
    if not registry.SUITES.is_dir():
        return []
    removed: list[str] = []
    for directory in sorted(registry.SUITES.iterdir()):
        if directory.is_dir() and not session_owner_alive(directory):
            removed += reap_ended_session(directory)
    return removed


def pytest_collection_finish(session: pytest.Session) -> None:
    # Only a session with lab tests reaps, before its first lab: any other pytest run on the machine (the
    # plugin loads in all of them once netlab is installed) leaves every lab alone.
    uses_labs = any(
        item.get_closest_marker("privileged") is not None or "lab" in getattr(item, "fixturenames", ())
        for item in session.items
    )
    if uses_labs and missing_reason() is None:
        reap_killed_sessions()


UNPRIVILEGED_PART = '-m "not privileged"'


def require_privileges() -> None:
    """Skip (or in CI fail) the current test when the lab's capabilities are missing.

    The CI failure is one line naming the capability and both fixes, with no traceback: in CI every
    privileged test fails alike, and twenty lines of this plugin each would bury the reason."""
    reason = missing_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(
            f"CI is set and this privileged test {reason}; "
            f"or run only the unprivileged part: {UNPRIVILEGED_PART}",
            pytrace=False,
        )
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
    runs = runs_dir(request.config)
    runs.mkdir(parents=True, exist_ok=True)
    # Unique, so that nothing another session (or an earlier run) keeps there is touched.
    run_dir = Path(tempfile.mkdtemp(prefix=run_dir_name(request.node.nodeid) + "-", dir=runs))
    run_dir.chmod(0o755)
    request.node.stash[RUN_DIR] = run_dir
    with Lab(workdir=run_dir, capture=True, description=request.node.nodeid) as running:
        yield running
    if not request.node.stash.get(FAILED, False):
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        keep_failed_run(run_dir)
