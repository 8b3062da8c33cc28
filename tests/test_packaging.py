"""Packaging: `pip install .` is the forwarder's zero-dependency install (netlab's dependencies come with
the `lab` extra), the wheel carries fixtures/ as netlab/_fixtures, the build warns about nothing, and the
netlab command without its extra says which one to install."""

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import forwarder
import netlab
from netlab.lab.process import python_env

ROOT = Path(__file__).resolve().parent.parent


def bare_install(tmp_path: Path) -> dict[str, str]:
    """The environment of a plain `pip install .`: this project's two packages and the standard library
    (python -S leaves out site-packages), without pyroute2, scapy or pytest."""
    site = tmp_path / "bare"
    site.mkdir()
    for package in (netlab, forwarder):
        (site / package.__name__).symlink_to(Path(package.__path__[0]))
    return dict(os.environ, PYTHONPATH=str(site))


def test_netlab_without_the_lab_extra_names_the_extra_in_one_line_and_exits_69(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-S", "-m", "netlab", "ls"],
        env=bare_install(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 69
    assert result.stderr == (
        "netlab: netlab needs pyroute2 and scapy, which come with the lab extra: "
        "pip install 'transparent-udp-forwarder[lab]'\n"
    )


def test_netlab_help_works_without_the_lab_extra(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-S", "-m", "netlab", "--help"],
        env=bare_install(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout


@pytest.mark.privileged
def test_netlab_run_works_where_pytest_cannot_be_imported(tmp_path: Path) -> None:
    poison = tmp_path / "site"
    (poison / "pytest").mkdir(parents=True)
    (poison / "pytest" / "__init__.py").write_text("raise ImportError('pytest is not installed here')\n")
    env = python_env()
    env["PYTHONPATH"] = f"{poison}{os.pathsep}{env['PYTHONPATH']}"
    result = subprocess.run(
        [sys.executable, "-m", "netlab", "run", "zero-length-datagram", "--runs", str(tmp_path / "runs")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("zero-length-datagram passed")


def _copy_of_the_checkout(tmp_path: Path) -> Path:
    """The sources alone (no virtualenv, caches or build output), so building writes nothing here."""
    ignored = shutil.ignore_patterns(
        ".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
    )
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=ignored)
    return source


@pytest.mark.slow
def test_the_wheel_is_the_forwarder_without_dependencies_and_carries_the_fixtures(tmp_path: Path) -> None:
    source = _copy_of_the_checkout(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    noise = [line for line in result.stderr.splitlines() if "warn" in line.lower()]
    assert noise == [], result.stderr
    [wheel] = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        [metadata_name] = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
    requirements = metadata.get_all("Requires-Dist") or []
    assert [r for r in requirements if "extra ==" not in r] == []  # nothing comes with a plain install
    assert any(r.startswith("pyroute2") and 'extra == "lab"' in r for r in requirements)
    assert any(r.startswith("scapy") and 'extra == "lab"' in r for r in requirements)
    shipped = {
        name.removeprefix("netlab/_fixtures/") for name in names if name.startswith("netlab/_fixtures/")
    }
    data = {
        str(path.relative_to(ROOT / "fixtures")) for path in (ROOT / "fixtures").rglob("*") if path.is_file()
    }
    assert shipped == data
    assert {"forwarder/__main__.py", "netlab/programs/echo.py", "netlab/cli/main.py"} <= names
