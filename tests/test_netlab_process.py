"""Processes in nodes: output in a per-test log file, SIGTERM then SIGKILL after a deadline, exit codes."""

import os
import signal
from unittest import mock

import pytest

from netlab import Lab
from netlab.errors import LabTimeoutError, ProcessFailedError
from netlab.lab import netns
from netlab.lab.wait import wait_until
from netlab.topology.shipped import seed_deployment

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


def test_stopping_a_process_reaped_long_ago_signals_nothing(lab: Lab) -> None:
    lab.build(seed_deployment())
    done = lab["host"].run(["true"])
    assert done.wait(10) == 0
    # Its pid, and so its process group id, may belong to another process by now: no signal may go there.
    with mock.patch.object(os, "killpg", side_effect=AssertionError("killpg of a reaped leader")):
        assert done.stop() == 0


def test_stop_kills_what_the_process_left_in_its_group(lab: Lab) -> None:
    lab.build(seed_deployment())
    parent = lab["host"].run(["sh", "-c", "sleep 60 & echo $!; exec sleep 60"])
    wait_until(lambda: parent.output().strip().isdigit(), "the child's pid", 5)
    child = int(parent.output().strip())
    assert parent.stop() != 0
    wait_until(lambda: not os.path.exists(f"/proc/{child}") or _is_zombie(child), "the child to die", 5)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_command_that_does_not_exist_is_refused_before_anything_starts(lab: Lab) -> None:
    lab.build(seed_deployment())
    with pytest.raises(FileNotFoundError, match="'no-such-command-here'"):
        lab["host"].run(["no-such-command-here", "--flag"])


def test_a_process_runs_inside_its_node_and_keeps_the_pid_it_was_started_with(lab: Lab) -> None:
    lab.build(seed_deployment())
    process = lab["host"].run(["sh", "-c", "echo $$; exec sleep 30"])
    wait_until(lambda: process.output().strip().isdigit(), "the shell to print its pid", 5)
    assert int(process.output().strip()) == process.pid  # nsenter execs: LISTEN_PID-style pids hold
    assert os.stat(f"/proc/{process.pid}/ns/net").st_ino == netns.inode(lab["host"].namespace)[1]
