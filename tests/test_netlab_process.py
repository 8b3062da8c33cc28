"""Processes in nodes: output in a per-test log file, SIGTERM then SIGKILL after a deadline, exit codes."""

import signal

import pytest

from netlab import Lab
from netlab.errors import LabTimeoutError, ProcessFailedError
from netlab.lab import wait_until
from netlab.topologies import seed_deployment

pytestmark = pytest.mark.privileged


def test_output_goes_to_a_log_file_in_the_tests_run_directory(lab: Lab) -> None:
    lab.build(seed_deployment())
    process = lab["backend"].run(["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"], label="talker")
    assert process.wait(10) == 3
    assert process.log_path.parent == lab.workdir
    assert process.log_path.name.startswith("backend-talker-")
    assert process.output().splitlines() == ["to-stdout", "to-stderr"]


def test_a_process_runs_inside_its_nodes_namespace(lab: Lab) -> None:
    lab.build(seed_deployment())
    assert "192.0.2.2/24" in lab["backend"].check(["ip", "-brief", "address", "show", "to-host"])


def test_stop_ends_a_cooperative_process_with_sigterm(lab: Lab) -> None:
    lab.build(seed_deployment())
    process = lab["host"].run(["sleep", "60"])
    assert process.stop(deadline=5) == -signal.SIGTERM


def test_stop_kills_a_process_that_ignores_sigterm_after_the_deadline(lab: Lab) -> None:
    lab.build(seed_deployment())
    process = lab["host"].run(["sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 1; done"])
    wait_until(lambda: "trapped" in process.output(), "the trap to be installed", 10)
    assert process.stop(deadline=0.2) == -signal.SIGKILL


def test_check_raises_with_the_command_exit_code_and_output(lab: Lab) -> None:
    lab.build(seed_deployment())
    with pytest.raises(ProcessFailedError, match=r"'sh -c echo broken; exit 7' in 'client' exited 7: broken"):
        lab["client"].check(["sh", "-c", "echo broken; exit 7"])


def test_waiting_for_a_process_that_keeps_running_times_out_naming_it(lab: Lab) -> None:
    lab.build(seed_deployment())
    process = lab["client"].run(["sleep", "60"])
    with pytest.raises(LabTimeoutError, match=rf"'sleep' \(pid {process.pid}\) still running after 0.1s"):
        process.wait(0.1)
