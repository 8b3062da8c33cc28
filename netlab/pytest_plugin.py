"""pytest plugin (entry point `pytest11`): the `lab` fixture and the `privileged` marker.

Privileged tests skip off-root with a reason naming the missing capability. In CI (CI set) a missing
capability fails the test instead: a privileged test must never skip quietly there.
"""

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import registry
from netlab.lab import Lab
from netlab.privileges import missing_reason


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


def _run_dir_name(nodeid: str) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{worker}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', nodeid)[-150:]}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """An empty lab (build it with `lab.build(topology)`), torn down after the test, pass or fail."""
    require_privileges()
    with Lab(workdir=tmp_path / "lab") as running:
        yield running
