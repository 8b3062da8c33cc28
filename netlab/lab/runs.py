"""Where failed runs keep their logs and pcaps (RUNS): --netlab-runs or `netlab run --runs`, else
$NETLAB_RUNS, else /tmp/netlab-runs. Shared by the pytest plugin and `netlab run`, which must not import
pytest."""

import os
import tempfile
from pathlib import Path


def default_runs_dir() -> Path:
    """$NETLAB_RUNS, else /tmp/netlab-runs: where failed runs keep their logs and pcaps."""
    chosen = os.environ.get("NETLAB_RUNS")
    return Path(chosen) if chosen else Path(tempfile.gettempdir()) / "netlab-runs"
