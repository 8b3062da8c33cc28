"""The Debian package of the forwarder, built by `./dev deb` (dpkg-buildpackage with debhelper and pybuild, in
a temporary copy of the sources): lintian-clean; the daemon in /usr/sbin, the forwarder in Python's
dist-packages, the template units, the manual page, the README it points to and commented /etc examples,
and nothing of netlab; depending on python3 alone. Extracted into a throwaway root (`dpkg-deb -x`), its
daemon runs on that root's Python path and its units pass `systemd-analyze verify`, man pages included.

Building takes about half a minute, so the package is built once per run and shared by the xdist workers.
"""

import fcntl
import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import forwarder

ROOT = Path(__file__).resolve().parent.parent
DAEMON = "usr/sbin/systemd-transparent-udp-forwarderd"
DIST_PACKAGES = "usr/lib/python3/dist-packages"
UNIT_DIRECTORY = "lib/systemd/system"
MAN_PAGE = "usr/share/man/man8/systemd-transparent-udp-forwarderd.8.gz"
# The README, whose routing recipes `--help` and the man page point to (compressed, as Debian does).
README = "usr/share/doc/transparent-udp-forwarder/README.md.gz"
TEMPLATES = [
    "transparent-udp-forwarder@.service",
    "transparent-udp-forwarder@.socket",
    "proxy-protocol-udp-forwarder@.service",
    "proxy-protocol-udp-forwarder@.socket",
    "transparent-udp-forwarder-range@.service",
    "transparent-udp-forwarder-range@.socket",
]
# The nftables ruleset the range units need (an example: the addresses and ports are the operator's).
RANGE_RULESET = "usr/share/doc/transparent-udp-forwarder/examples/port-range.nft"
INSTANCE = "27015"
# Debian's own tools only, whatever python3 comes first on the test's PATH (pyenv, the virtualenv).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def packaging_packages() -> list[str]:
    """The Debian packages `./dev deb` installs to build the package (its DEB_APT_PACKAGES)."""
    found = re.search(r"^DEB_APT_PACKAGES=\(([^)]*)\)", (ROOT / "dev").read_text(), re.M)
    assert found, "./dev has no DEB_APT_PACKAGES=(...) line"
    return found[1].split()


def is_installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.stdout.endswith("install ok installed")


def require_packaging_tools() -> None:
    """Skip (in CI: fail) when a build dependency is missing: `./dev test` installs them all."""
    if shutil.which("dpkg-query") is None:
        missing = ["dpkg"]
    else:
        missing = [package for package in packaging_packages() if not is_installed(package)]
    if missing:
        reason = f"missing Debian packages {', '.join(missing)} (./dev test and ./dev deb install them)"
        if os.environ.get("CI"):
            pytest.fail(f"cannot build the Debian package in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb `./dev deb` builds, once per run: the first xdist worker builds it, the others wait for it."""
    require_packaging_tools()
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the directory every worker's base directory is in
    output = shared / "debian-package"
    with open(shared / "debian-package.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not list(output.glob("*.deb")):
            result = subprocess.run(
                [str(ROOT / "dev"), "deb", str(output)],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr
    [deb] = output.glob("*.deb")
    return deb


@pytest.fixture(scope="module")
def installed_root(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway root the package is extracted into, as dpkg would unpack it."""
    root = tmp_path_factory.mktemp("debian-root")
    subprocess.run(["dpkg-deb", "-x", str(package), str(root)], check=True)
    return root


def contents(package: Path) -> set[str]:
    """The paths of the package's files and directories, as `dpkg-deb -c` lists them (without ./)."""
    listing = subprocess.run(["dpkg-deb", "-c", str(package)], capture_output=True, text=True, check=True)
    return {
        line.split(maxsplit=5)[5].split(" -> ")[0].removeprefix("./").rstrip("/")
        for line in listing.stdout.splitlines()
    } - {""}


def field(package: Path, name: str) -> str:
    result = subprocess.run(
        ["dpkg-deb", "-f", str(package), name], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_the_package_holds_the_daemon_the_forwarder_the_units_the_man_page_and_the_etc_examples(
    package: Path,
) -> None:
    sources = ROOT / "forwarder"
    # Its modules and the directories of its subpackages (dpkg-deb -c lists both).
    modules = {
        f"{DIST_PACKAGES}/forwarder/{path.relative_to(sources)}"
        for path in [*sources.rglob("*.py"), *(path.parent for path in sources.glob("*/__init__.py"))]
    }
    expected = {
        DAEMON,
        MAN_PAGE,
        README,
        "etc/transparent-udp-forwarder/PORT.env.example",
        "etc/proxy-protocol-udp-forwarder/PORT.env.example",
        "etc/transparent-udp-forwarder-range/PORT.env.example",
        RANGE_RULESET,
        *(f"{UNIT_DIRECTORY}/{name}" for name in TEMPLATES),
        *modules,
    }

    paths = contents(package)

    assert expected - paths == set()
    # Every module of the checkout's forwarder, and no other.
    assert {path for path in paths if path.startswith(f"{DIST_PACKAGES}/forwarder/")} == modules


def test_the_package_holds_nothing_of_netlab(package: Path, installed_root: Path) -> None:
    paths = contents(package)

    assert [path for path in paths if "netlab" in path or "fixtures" in path or "scenario" in path] == []
    assert not any(path.startswith("usr/bin/") for path in paths)
    # No pytest plugin or netlab command registered either: only the daemon's console script.
    [entry_points] = installed_root.glob(f"{DIST_PACKAGES}/*.dist-info/entry_points.txt")
    assert entry_points.read_text().split() == [
        "[console_scripts]",
        "systemd-transparent-udp-forwarderd",
        "=",
        "forwarder.service.cli:main",
    ]


def test_the_package_depends_on_python3_3_11_and_nothing_else(package: Path) -> None:
    assert field(package, "Depends") == "python3:any (>= 3.11~)"
    assert field(package, "Package") == "transparent-udp-forwarder"
    assert field(package, "Version") == forwarder.__version__


def test_the_package_is_lintian_clean(package: Path) -> None:
    result = subprocess.run(
        ["lintian", "--display-info", str(package)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PATH=SYSTEM_PATH),
        check=False,
    )

    tags = [line for line in result.stdout.splitlines() if re.match(r"[EWIXPO]: ", line)]
    assert tags == [], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr


def run_installed(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the extracted root's daemon (its #!/usr/bin/python3) with only that root's package importable."""
    return subprocess.run(
        [str(root / DAEMON), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env={"PATH": SYSTEM_PATH, "PYTHONPATH": str(root / DIST_PACKAGES), "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )


def test_the_installed_daemon_prints_its_version_from_the_installed_package(
    package: Path, installed_root: Path
) -> None:
    assert (installed_root / DAEMON).read_text().startswith("#!/usr/bin/python3\n")

    result = run_installed(installed_root, "--version")

    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"systemd-transparent-udp-forwarderd {field(package, 'Version')}\n",
        "",
    )
    where = subprocess.run(
        ["/usr/bin/python3", "-c", "import forwarder.service.cli; print(forwarder.service.cli.__file__)"],
        capture_output=True,
        text=True,
        cwd=installed_root,
        env={"PATH": SYSTEM_PATH, "PYTHONPATH": str(installed_root / DIST_PACKAGES)},
        check=True,
    )
    assert where.stdout.strip() == str(installed_root / DIST_PACKAGES / "forwarder" / "service" / "cli.py")


def test_the_installed_daemon_refuses_a_bad_option_with_exit_64(installed_root: Path) -> None:
    result = run_installed(installed_root, "--no-such-option", "192.0.2.2")

    assert result.returncode == 64
    assert "--no-such-option" in result.stderr


def test_the_installed_units_run_the_daemon_the_package_installs(installed_root: Path) -> None:
    for name in TEMPLATES:
        if name.endswith(".service"):
            text = (installed_root / UNIT_DIRECTORY / name).read_text()
            assert re.findall(r"^ExecStart=(\S+)", text, re.M) == [f"/{DAEMON}"], name


@pytest.fixture
def instance_copies(installed_root: Path, tmp_path: Path) -> list[Path]:
    """Each installed template as instance 27015 (`systemd-analyze verify` reads a template file as the
    instance 'i', which is no port), its ExecStart= naming the daemon in the throwaway root."""
    copies = []
    for name in TEMPLATES:
        text = (installed_root / UNIT_DIRECTORY / name).read_text()
        text = text.replace(f"ExecStart=/{DAEMON} ", f"ExecStart={installed_root / DAEMON} ")
        copy = tmp_path / name.replace("@.", f"@{INSTANCE}.")
        copy.write_text(text)
        copies.append(copy)
    return copies


def verify(units: list[Path], manpath: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` with its man page check: every Documentation=man:... must be found in
    `manpath` (the throwaway root's, then the system's, as the trailing colon says)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze not found: install the Debian package 'systemd'"
    return subprocess.run(
        [analyze, "--no-pager", "verify", "--man=yes", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, MANPATH=manpath),
        check=False,
    )


def test_the_installed_units_pass_systemd_analyze_verify_with_the_installed_man_page(
    installed_root: Path, instance_copies: list[Path]
) -> None:
    result = verify(instance_copies, f"{installed_root / 'usr/share/man'}:")

    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_fails_when_the_man_page_the_units_name_is_not_installed(
    installed_root: Path, instance_copies: list[Path], tmp_path: Path
) -> None:
    # Pins that the check above looks the page up: without the root's man pages it is not found.
    result = verify(instance_copies, f"{tmp_path}:")

    assert "man systemd-transparent-udp-forwarderd(8)" in result.stderr


def test_the_installed_man_page_is_the_one_generated_from_the_parser(installed_root: Path) -> None:
    page = gzip.decompress((installed_root / MAN_PAGE).read_bytes()).decode()
    generated = subprocess.run(
        ["/usr/bin/python3", str(ROOT / "man" / "manpage.py")],
        capture_output=True,
        text=True,
        env={"PATH": SYSTEM_PATH},
        check=True,
    )

    assert page == generated.stdout


def test_the_installed_man_page_names_the_installed_readme_which_is_the_checkouts(
    installed_root: Path,
) -> None:
    # --help and the man page send the reader to "the README's routing recipe": the page says where it is,
    # and that file is this checkout's README, recipes included.
    page = gzip.decompress((installed_root / MAN_PAGE).read_bytes()).decode()
    named = set(re.findall(r"/usr/share/doc/\S*README\S*", page.replace("\\-", "-")))

    assert named == {f"/{README}"}
    readme = gzip.decompress((installed_root / README).read_bytes()).decode()
    assert readme == (ROOT / "README.md").read_text()
    assert "#### Relay: the host routes the replies to the forwarder" in readme


def test_building_leaves_the_checkout_as_it_was(package: Path) -> None:
    # dpkg-buildpackage writes debian/<package>, debian/files, .pybuild/ and the .deb beside its source:
    # all of that happened in the temporary copy.
    assert package.parent != ROOT.parent
    leftovers = [
        path
        for path in (
            "debian/transparent-udp-forwarder",
            "debian/files",
            "debian/forwarder-source",
            ".pybuild",
        )
        if (ROOT / path).exists()
    ]
    assert leftovers == []
    assert list(ROOT.parent.glob("transparent-udp-forwarder_*")) == []
