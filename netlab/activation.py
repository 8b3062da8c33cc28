"""Starting the forwarder inside a node the way systemd does: under `systemd-socket-activate --datagram`,
with a NOTIFY_SOCKET the lab listens on, so tests wait for READY=1 instead of sleeping.
"""

import shutil
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from netlab.errors import LabTimeoutError, ProcessFailedError
from netlab.lab import LabNode, python_env, wait_until
from netlab.notify import NotifyReceiver
from netlab.process import Process

SOCKET_ACTIVATE = "systemd-socket-activate"


def split_listen(address: str) -> tuple[str, int]:
    """'198.51.100.1:27000' or '[2001:db8::1]:27000' -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def udp_ports_bound(pid: int) -> set[int]:
    """Local UDP ports bound in the network namespace of `pid` (from /proc/PID/net/udp and udp6)."""
    ports: set[int] = set()
    for table in ("udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as handle:
                next(handle)
                for line in handle:
                    local = line.split()[1]
                    ports.add(int(local.rpartition(":")[2], 16))
        except (OSError, StopIteration):
            continue
    return ports


@dataclass
class ForwarderUnderTest:
    """A forwarder started by systemd-socket-activate in a lab node."""

    process: Process
    notify: NotifyReceiver
    listen: list[str]
    argv: list[str] = field(default_factory=list)

    def is_running(self) -> bool:
        return self.process.returncode is None

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait for READY=1; fails at once, with the log, if the process exits first."""
        try:
            self.notify.wait_for("READY", "1", timeout=timeout, is_alive=self.is_running)
        except LabTimeoutError as error:
            raise LabTimeoutError(f"{error}\n--- forwarder log ---\n{self.process.output()}") from None

    def stop(self, deadline: float = 5.0) -> int:
        """SIGTERM (then SIGKILL after `deadline`); return the exit code."""
        return self.process.stop(deadline)


def start_forwarder(
    node: LabNode,
    listen: Sequence[str],
    destinations: Sequence[str],
    *,
    fdnames: Sequence[str] | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> ForwarderUnderTest:
    """Start the forwarder in `node` under systemd-socket-activate listening on `listen` (ADDR:PORT each).

    Returns once the activator holds every listening socket. The forwarder itself starts on the first
    datagram (as with a .socket unit); wait for it with `wait_ready()` after sending.
    """
    activate = shutil.which(SOCKET_ACTIVATE)
    if activate is None:
        raise ProcessFailedError(f"{SOCKET_ACTIVATE} not found: install the Debian package 'systemd'")
    lab = node.lab
    notify_path = lab.socket_dir / f"notify-{lab.next_serial()}.sock"
    receiver = NotifyReceiver(notify_path)
    lab.defer(receiver.close)
    argv = [activate, "--datagram"]
    for address in listen:
        argv += ["-l", address]
    if fdnames:
        argv.append("--fdname=" + ":".join(fdnames))
    # systemd-socket-activate passes only a few variables on; the rest must be given with -E.
    child_env = {"NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": python_env()["PYTHONPATH"]}
    child_env.update(env or {})
    for key, value in child_env.items():
        argv += ["-E", f"{key}={value}"]
    argv += [sys.executable, "-m", "forwarder", *args, *destinations]
    process = node.run(argv, label="forwarder", env=python_env())
    wanted = {split_listen(address)[1] for address in listen}

    def listening() -> bool:
        if process.returncode is not None:
            raise ProcessFailedError(
                f"{SOCKET_ACTIVATE} exited {process.returncode} before listening: {process.output()}"
            )
        return wanted <= udp_ports_bound(process.pid)

    wait_until(listening, f"{SOCKET_ACTIVATE} to listen on {list(listen)}", timeout)
    return ForwarderUnderTest(process, receiver, list(listen), argv)


def family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in split_listen(address)[0] else socket.AF_INET


__all__ = ["ForwarderUnderTest", "start_forwarder", "udp_ports_bound"]
