"""Processes started inside a node: output to a log file, stopped with SIGTERM then SIGKILL after a
deadline, exit code kept for assertions.
"""

import contextlib
import errno
import os
import select
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from netlab.errors import CommandNotFoundError, LabTimeoutError
from netlab.lab import netns

NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"  # util-linux


class Process:
    """A process running in a lab node."""

    def __init__(  # noqa: PLR0913 - how one process is started
        self,
        argv: Sequence[str],
        *,
        namespace: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        stdin: int | None = subprocess.DEVNULL,
    ) -> None:
        self.argv = list(argv)
        self.namespace = namespace
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = shutil.which(self.argv[0]) if "/" not in self.argv[0] else self.argv[0]
        if command is None or not os.access(command, os.X_OK):
            raise CommandNotFoundError(errno.ENOENT, f"command not found: {self.argv[0]!r}")
        with open(log_path, "ab") as log:
            # nsenter joins the node's network namespace and execs the command (same pid, same fds): no
            # Python runs between fork and exec in this multi-threaded process.
            self.popen = subprocess.Popen(
                [NSENTER, f"--net={netns.netns_path(namespace)}", "--", command, *self.argv[1:]],
                stdin=stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ if env is None else env),
                pass_fds=tuple(pass_fds),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        """What the process wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; raise LabTimeoutError after `timeout` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabTimeoutError(
                f"{self.argv[0]!r} (pid {self.pid}) still running after {timeout}s; log: {self.log_path}"
            ) from None

    def signal(self, signum: int) -> None:
        """Send `signum` unless the process was reaped already (its pid may then belong to another one)."""
        if self.popen.returncode is None:  # unreaped: the pid is still ours, even as a zombie
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def stop(self, deadline: float = 5.0) -> int:
        """SIGTERM, then SIGKILL to the whole process group after `deadline` seconds; return the exit code.

        The leader is reaped only after its group was killed: until then its pid cannot be reused, so the
        group signal can never reach an unrelated process group.
        """
        if self.popen.returncode is not None:
            return self.popen.returncode
        with _pidfd(self.pid) as exited:
            if not exited(0):
                self.signal(signal.SIGTERM)
                if not exited(deadline):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.pid, signal.SIGKILL)
                    exited(None)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # anything the process left behind in its group
        return self.popen.wait()


@contextlib.contextmanager
def _pidfd(pid: int) -> Iterator[Callable[[float | None], bool]]:
    """A pidfd for `pid` and a function that waits up to a timeout (None: forever) for it to exit,
    without reaping it."""
    fd = os.pidfd_open(pid)
    try:

        def exited(timeout: float | None) -> bool:
            return bool(select.select([fd], [], [], timeout)[0])

        yield exited
    finally:
        os.close(fd)


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Python child that must import this checkout's packages."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env
