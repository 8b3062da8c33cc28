"""Two suites on one machine must not collide: run two copies of the privileged tests that share machine
state at once, from two private checkouts, while labs made outside the suites are up; exit 0 only when
both suites pass, the outside labs survive them, and each suite removed its registry. `tox -e suites`
runs it (in CI, as root); the suites inherit this environment.

The tests run are those that touch what two suites could share: run directories and captures
(test_netlab_captures), the lab registry and reaping (test_netlab_cleanup, test_netlab_sessions), the CLI's
`up`/`down --all`/`ls`/`exec`/`run` (test_netlab_cli), and the forwarder as uid `nobody`
(test_systemd_units), which must work from a checkout `nobody` cannot read: each copy lives in a 0700
directory with its own virtualenv (`.venv`), as a clone in root's home directory does. The rest of the
suite only builds labs with random names, the same thing many times over, and would only make it slower.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
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
# A lab like `netlab up seed` makes, built without entering the Lab: entering reaps, and a reaper in the
# machine's registry would remove every other lab on this machine that it cannot see.
OUTSIDE_LAB = """
import sys
from pathlib import Path
from netlab import Lab, load_topology
lab = Lab(workdir=Path(sys.argv[1]), description="two_suites: a lab made outside the suites")
lab.build(load_topology("seed"))
lab.detach()
print(lab.lab_id)
"""


def netlab(source: Path, registry: Path | None, *args: str, check: bool = True) -> str:
    """Run the source checkout's `python -m netlab ARGS` (or `python -c ARGS`) with the machine's default
    registry (None) or `registry`; its output. A failure ends this program, unless `check` is false (then
    it is printed)."""
    env = {key: value for key, value in os.environ.items() if key != "NETLAB_REGISTRY"}
    env["PYTHONPATH"] = str(source)
    if registry is not None:
        env["NETLAB_REGISTRY"] = str(registry)
    argv = [sys.executable, *(args if args[0] == "-c" else ("-m", "netlab", *args))]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        message = f"two_suites: {' '.join(argv[1:3])} exited {result.returncode}: {result.stderr.strip()}"
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


def make_venv(checkout: Path) -> None:
    """`checkout`/.venv, as `./dev` makes it, that finds its packages where the interpreter running this
    script does (a .pth file: nothing is downloaded); the checkout's own code comes first on the path."""
    venv = checkout / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    (Path(purelib) / "two-suites.pth").write_text(sysconfig.get_path("purelib") + "\n")


def start_suite(checkout: Path, log: Path, workers: str, tests: list[str]) -> subprocess.Popen[bytes]:
    """pytest on `tests` of `checkout` with the checkout's virtualenv and code, output to `log`."""
    with open(log, "wb") as output:
        return subprocess.Popen(
            [".venv/bin/python", "-m", "pytest", "-n", workers, "-p", "no:cacheprovider", *tests],
            cwd=checkout,
            env=dict(os.environ, PYTHONPATH=str(checkout)),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers too can be stopped at once
        )


def wait_for_suites(suites: list[subprocess.Popen[bytes]], logs: list[Path], started: float) -> list[str]:
    """Wait for both suites (killing one that outlives TIMEOUT); what went wrong with each, if anything."""
    failures: list[str] = []
    for name, suite, log in zip("ab", suites, logs, strict=True):
        try:
            code = suite.wait(max(TIMEOUT - (time.monotonic() - started), 1))
        except subprocess.TimeoutExpired:
            os.killpg(suite.pid, signal.SIGKILL)
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
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--workers", default="2", help="pytest-xdist workers of each suite (default 2)")
    parser.add_argument("--tests", nargs="+", default=TESTS, help=f"test files to run (default {TESTS})")
    options = parser.parse_args()
    source = options.source.resolve()
    if os.geteuid() != 0:  # as the privileged tests do: skip off-root, but never quietly in CI
        print(
            "two_suites: needs root (network namespaces, uid changes): "
            + ("FAILED" if os.environ.get("CI") else "skipped")
        )
        return 1 if os.environ.get("CI") else 0

    private = Path(tempfile.mkdtemp(prefix="netlab-two-suites-"))  # 0700: `nobody` cannot enter
    checkouts = [private / name / "checkout" for name in ("a", "b")]
    for checkout in checkouts:
        shutil.copytree(source, checkout, ignore=NOT_COPIED)
        make_venv(checkout)
    outside_registry = private / "outside-registry"

    # Outside the suites: a developer's lab in the machine's registry, and one in a registry of its own
    # (whose namespaces no record in the machine's registry claims).
    workdir = private / "outside-workdir"
    outside: dict[Path | None, str] = {}
    outside_namespaces: dict[Path | None, list[str]] = {}
    failures: list[str] = []
    try:
        for registry in (None, outside_registry):
            outside[registry] = netlab(source, registry, "-c", OUTSIDE_LAB, str(workdir)).strip()
            outside_namespaces[registry] = namespaces_of(source, registry, outside[registry])
        started = time.monotonic()
        logs = [checkout.parent / "pytest.log" for checkout in checkouts]
        suites = [
            start_suite(checkout, log, options.workers, options.tests)
            for checkout, log in zip(checkouts, logs, strict=True)
        ]
        failures += wait_for_suites(suites, logs, started)
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
