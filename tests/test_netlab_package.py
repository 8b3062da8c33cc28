"""The package's shape: `import netlab` is light (PEP 562 lazy names), every public name resolves, and the
programs that run inside a node start without netlab's heavy dependencies."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import netlab
from netlab.lab.process import python_env

PROGRAMS = ["agent", "blaster", "echo", "fdpass", "per_datagram", "sysfs"]


def poisoned_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which importing pyroute2, scapy or pytest fails, as on a host without netlab's
    extras."""
    for name in ("pyroute2", "scapy", "pytest"):
        package = tmp_path / name
        package.mkdir()
        (package / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    env = python_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    return env


def test_every_public_name_of_netlab_resolves() -> None:
    for name in netlab.__all__:
        assert getattr(netlab, name) is not None, name
    assert set(netlab.__all__) <= set(dir(netlab))


def test_an_unknown_name_of_netlab_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Lba'"):
        _ = netlab.Lba


def test_importing_netlab_loads_neither_pyroute2_nor_scapy(tmp_path: Path) -> None:
    code = "import netlab, netlab.errors, netlab.programs.crafted; print(netlab.NetlabError.__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], env=poisoned_env(tmp_path), capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "NetlabError"), result.stderr


@pytest.mark.parametrize("program", PROGRAMS)
def test_a_program_starts_without_pyroute2_scapy_or_pytest(tmp_path: Path, program: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", f"netlab.programs.{program}"],
        env=poisoned_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 64, result.stderr  # its usage error: it got as far as reading argv
    assert f"usage: python -m netlab.programs.{program}" in result.stderr


def test_fdpass_hands_sockets_over_without_pyroute2(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "netlab.programs.fdpass",
                str(write_end),
                "--",
                "sh",
                "-c",
                'echo "$LISTEN_FDS" >&3',
            ],
            env=poisoned_env(tmp_path),
            pass_fds=[write_end],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end) as handle:
        assert (result.returncode, handle.read().strip()) == (0, "1"), result.stderr
