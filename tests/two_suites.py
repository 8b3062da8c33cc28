"""Two suites on one machine must not collide: run two copies of the privileged tests that share machine
state at once, from two private checkouts, while labs made outside the suites are up; exit 0 only when
both suites pass, the outside labs survive them, and each suite removed its registry. `tox -e suites`
runs it (in CI, as root); the suites inherit this environment.

The tests run are those that touch what two suites could share: run directories and captures
(test_netlab_captures), the lab registry and reaping (test_netlab_cleanup, test_netlab_sessions), the CLI's
`up`/`down --all`/`ls`/`exec`/`run` (test_netlab_cli), and the forwarder as uid `nobody`
(test_systemd_units), which must work from a checkout `nobody` cannot read: each copy lives in a 0700
directory, as a clone in root's home directory does. The rest of the suite only builds labs with random
names, which is the same thing many times over and would only make this slower.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = [
    "tests/test_netlab_captures.py",
    "tests/test_netlab_cleanup.py",
    "tests/test_netlab_cli.py",
    "tests/test_netlab_sessions.py",
    "tests/test_systemd_units.py",
]
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".tox", "__pycache__", ".*_cache", "*.egg-info", "build", "dist"
)
SUITES = Path("/run/netlab/suites")
TIMEOUT = 480.0


def netlab(source: Path, registry: Path | None, *args: str, check: bool = True) -> str:
    """Run the source checkout's `netlab` with the machine's default registry (None) or `registry`; its
    output. A failure ends this program, unless `check` is false (then it is printed)."""
    env = {key: value for key, value in os.environ.items() if key != "NETLAB_REGISTRY"}
    env["PYTHONPATH"] = str(source)
    if registry is not None:
        env["NETLAB_REGISTRY"] = str(registry)
    argv = [sys.executable, "-m", "netlab", *args]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        message = f"two_suites: netlab {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
        if check:
            raise SystemExit(message)
        print(message)
    return result.stdout


def namespaces_of(source: Path, registry: Path | None, lab_id: str) -> list[str]:
    """The namespaces of lab `lab_id` in that registry, from `netlab ls --json`."""
    labs = json.loads(netlab(source, registry, "ls", "--json"))
    return next(list(lab["namespaces"]) for lab in labs if lab["id"] == lab_id)


def existing_namespaces() -> set[str]:
    """The network namespaces `ip netns` knows (iproute2's directory)."""
    directory = Path("/run/netns")
    return {path.name for path in directory.iterdir()} if directory.is_dir() else set()


def start_suite(checkout: Path, log: Path, workers: str) -> subprocess.Popen[bytes]:
    """pytest on the chosen tests of `checkout`, with its code first on the path, output to `log`."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    with open(log, "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", "-n", workers, "-p", "no:cacheprovider", *TESTS],
            cwd=checkout,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--workers", default="2", help="pytest-xdist workers of each suite (default 2)")
    options = parser.parse_args()
    source = options.source.resolve()

    private = Path(tempfile.mkdtemp(prefix="netlab-two-suites-"))  # 0700: `nobody` cannot enter
    checkouts = [private / name / "checkout" for name in ("a", "b")]
    for checkout in checkouts:
        shutil.copytree(source, checkout, ignore=NOT_COPIED)
    outside_registry = private / "outside-registry"

    # Outside the suites: a developer's lab in the machine's registry, and one in a registry of its own
    # (whose namespaces no record in the machine's registry claims).
    outside = {
        registry: netlab(source, registry, "up", "seed").strip() for registry in (None, outside_registry)
    }
    outside_namespaces = {
        registry: namespaces_of(source, registry, lab_id) for registry, lab_id in outside.items()
    }
    failures: list[str] = []
    try:
        started = time.monotonic()
        logs = [checkout.parent / "pytest.log" for checkout in checkouts]
        suites = [
            start_suite(checkout, log, options.workers) for checkout, log in zip(checkouts, logs, strict=True)
        ]
        for name, suite, log in zip("ab", suites, logs, strict=True):
            try:
                code = suite.wait(max(TIMEOUT - (time.monotonic() - started), 1))
            except subprocess.TimeoutExpired:
                suite.kill()
                code = suite.wait()
                failures.append(f"suite {name} did not finish within {TIMEOUT:.0f}s")
            lines = log.read_text(errors="replace").splitlines()
            print(f"two_suites: suite {name} exited {code}: {lines[-1] if lines else '(no output)'}")
            if code != 0:
                failures.append(f"suite {name} exited {code}; its output is in {log}")
                print("\n".join(lines[-60:]))
            left = sorted(SUITES.glob(f"{suite.pid}-*"))
            if left:
                failures.append(f"suite {name} left its registry behind: {[str(path) for path in left]}")
        print(f"two_suites: both suites ran in {time.monotonic() - started:.0f}s")
        present = existing_namespaces()
        for registry, namespaces in outside_namespaces.items():
            gone = [name for name in namespaces if name not in present]
            if gone:
                where = "the machine's registry" if registry is None else str(registry)
                failures.append(
                    f"the suites removed namespaces of lab {outside[registry]} in {where}: {gone}"
                )
    finally:
        for registry, lab_id in outside.items():
            netlab(source, registry, "down", lab_id, check=False)
    for failure in failures:
        print(f"two_suites: FAILED: {failure}")
    if failures:
        print(f"two_suites: the checkouts and logs are kept in {private}")
        return 1
    shutil.rmtree(private)
    print("two_suites: both suites passed, and the labs made outside them survived")
    return 0


if __name__ == "__main__":
    sys.exit(main())
