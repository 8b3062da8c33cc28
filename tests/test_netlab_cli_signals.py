"""The CLI turns SIGTERM into a clean teardown in the command's own process only: pyroute2's forked helpers
inherit the handler and must simply die (they once unwound through the CLI and stalled `netlab demo`)."""

import os
import signal
import subprocess
import sys

import pytest

from netlab.cli import main as cli
from netlab.lab.process import python_env


def test_a_forked_helper_dies_on_sigterm_instead_of_running_the_cli() -> None:
    pid = os.fork()
    if pid == 0:  # the child: as a pyroute2 helper would be
        try:
            cli._sigterm_as_interrupt(signal.SIGTERM, None)
        finally:
            os._exit(1)  # reached only if the handler returned or raised
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM


def test_in_the_command_itself_sigterm_interrupts() -> None:
    with pytest.raises(KeyboardInterrupt):
        cli._sigterm_as_interrupt(signal.SIGTERM, None)


@pytest.mark.privileged
def test_netlab_demo_passes_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "netlab", "demo"],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo passed" in result.stdout
