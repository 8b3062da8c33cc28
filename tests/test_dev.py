"""`./dev test -- ARGS` (tox's positional arguments) reaches the pytest environments only: the other
environments of the default run must not be handed pytest's options."""

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Inside tox's own environment tox is not installed: the one `./dev` installed in .venv runs it.
_CANDIDATES = [
    Path(sys.executable).parent / "tox",
    ROOT / ".venv" / "bin" / "tox",
    Path(shutil.which("tox") or "/"),
]
TOX = next((path for path in _CANDIDATES if path.is_file()), _CANDIDATES[0])
PYTEST_ARGS = ["--junitxml=out.xml", "-k", "e2e"]


def tox_environments() -> list[str]:
    """Every environment tox.ini defines: the default list and the [testenv:NAME] sections."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tox.ini")
    names = [name.strip() for name in config["tox"]["envlist"].split(",")]
    return names + [s.removeprefix("testenv:") for s in config.sections() if s.startswith("testenv:")]


def rendered_commands(environment: str) -> str:
    """The commands tox would run in `environment` for `./dev test -e ENV -- PYTEST_ARGS`."""
    completed = subprocess.run(
        [str(TOX), "config", "-e", environment, "-k", "commands", "--", *PYTEST_ARGS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return completed.stdout


@pytest.mark.skipif(not TOX.exists(), reason="tox is not installed (`./dev test` installs it in .venv)")
@pytest.mark.parametrize("environment", sorted(set(tox_environments())))
def test_positional_arguments_reach_only_the_environments_that_run_pytest(environment: str) -> None:
    commands = rendered_commands(environment)
    runs_pytest = "pytest" in commands
    assert ("--junitxml=out.xml" in commands) == runs_pytest, commands
    if runs_pytest:
        assert "--junitxml=out.xml -k e2e" in commands, commands
