"""Where failed runs keep their logs and pcaps (RUNS): --netlab-runs or `netlab run --runs`, else
$NETLAB_RUNS, else /tmp/netlab-runs. Shared by the pytest plugin and `netlab run`, which must not import
pytest.

Only the newest $NETLAB_RUNS_KEEP failed runs (default 20; 0 keeps them all) stay: a kept run directory
is marked, and marking one removes the oldest marked ones beyond that. Unmarked directories (a run still
in progress, another session's, anything else in RUNS) are never touched.
"""

import os
import shutil
import tempfile
import time
from pathlib import Path

from netlab.errors import UsageError

KEEP_DEFAULT = 20
KEPT_MARK = ".netlab-kept"


def default_runs_dir() -> Path:
    """$NETLAB_RUNS, else /tmp/netlab-runs: where failed runs keep their logs and pcaps."""
    chosen = os.environ.get("NETLAB_RUNS")
    return Path(chosen) if chosen else Path(tempfile.gettempdir()) / "netlab-runs"


def kept_runs_limit() -> int:
    """How many failed runs RUNS keeps: $NETLAB_RUNS_KEEP (0: all), else KEEP_DEFAULT."""
    text = os.environ.get("NETLAB_RUNS_KEEP", "").strip()
    if not text:
        return KEEP_DEFAULT
    if not text.isdigit():
        raise UsageError(f"NETLAB_RUNS_KEEP={text!r}: expected how many failed runs to keep (0: all)")
    return int(text)


def keep_failed_run(run_dir: Path, keep: int | None = None) -> list[Path]:
    """Mark `run_dir` as a kept failed run, then remove the oldest kept runs next to it beyond `keep`
    (kept_runs_limit() by default; 0 keeps all); return the directories removed."""
    limit = kept_runs_limit() if keep is None else keep
    (run_dir / KEPT_MARK).write_text(f"{time.time()}\n")
    if limit == 0:
        return []
    kept = []
    for directory in run_dir.parent.iterdir():
        try:
            kept.append(((directory / KEPT_MARK).stat().st_mtime_ns, directory.name, directory))
        except (FileNotFoundError, NotADirectoryError):
            continue  # not a kept run (or removed meanwhile by another session's pruning)
    removed = [directory for _, _, directory in sorted(kept)[:-limit]]
    for directory in removed:
        shutil.rmtree(directory, ignore_errors=True)
    return removed
