"""Starting the forwarder inside a node the way systemd does: under `systemd-socket-activate --datagram`,
with a NOTIFY_SOCKET the lab listens on, so tests wait for READY=1 instead of sleeping.

The listening sockets are either made by systemd-socket-activate (`-l ADDR:PORT`) or held by the lab
(`hold_listen_sockets`) and handed to it as PID 1 hands a .socket unit's sockets over: inherited at fd 3...
with LISTEN_FDS/LISTEN_PID, which it passes on. Held sockets outlive the forwarder, so `restart()` keeps
them open: a datagram sent while no forwarder runs waits in the socket for the next one.
"""

import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from netlab.addresses import parse_endpoint
from netlab.errors import LabTimeoutError, NetlabError, ProcessFailedError
from netlab.lab.node import LabNode
from netlab.lab.process import Process, python_env
from netlab.lab.wait import wait_until
from netlab.service.notify import NotifyEvent, NotifyReceiver
from netlab.service.procnet import udp_ports_bound

SOCKET_ACTIVATE = "systemd-socket-activate"
COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START", "COVERAGE_CORE", "COVERAGE_FILE")


@dataclass
class HeldSockets:
    """Listening UDP sockets the lab made inside a node and keeps open, in `listen` order."""

    node: LabNode
    listen: list[str]
    sockets: list[socket.socket]

    @property
    def fds(self) -> list[int]:
        return [sock.fileno() for sock in self.sockets]


def hold_listen_sockets(node: LabNode, listen: Sequence[str]) -> HeldSockets:
    """Bind a UDP socket per ADDR:PORT of `listen` in `node`, like a .socket unit; the lab closes them."""
    sockets = []
    for address in listen:
        host, port = parse_endpoint(address)
        sock = node.open_socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        if ":" in host:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # BindIPv6Only=ipv6-only semantics
        sock.bind((host, port))
        sockets.append(sock)
    return HeldSockets(node, list(listen), sockets)


@dataclass
class ForwarderUnderTest:
    """A forwarder started by systemd-socket-activate in a lab node."""

    process: Process
    notify: NotifyReceiver
    listen: list[str]
    argv: list[str] = field(default_factory=list)
    sockets: HeldSockets | None = None
    started: float = field(default_factory=time.monotonic)
    _launch: Callable[[], Process] | None = None

    def is_running(self) -> bool:
        return self.process.returncode is None

    def wait_for(
        self, key: str, value: str | Callable[[str], bool] | None = None, timeout: float = 15.0
    ) -> NotifyEvent:
        """Wait for a notification of this run (since the last (re)start); fails with the log if it exits."""
        try:
            return self.notify.wait_for(
                key, value, timeout=timeout, after=self.started, is_alive=self.is_running
            )
        except LabTimeoutError as error:
            raise LabTimeoutError(f"{error}\n--- forwarder log ---\n{self.process.output()}") from None

    def wait_ready(self, timeout: float = 15.0) -> NotifyEvent:
        """Wait for READY=1 of this run; fails at once, with the log, if the process exits first."""
        return self.wait_for("READY", "1", timeout)

    def wait_status(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> NotifyEvent:
        """Wait for a STATUS= line `predicate` accepts."""
        return self.wait_for("STATUS", predicate, timeout)

    def stop(self, deadline: float = 5.0) -> int:
        """SIGTERM (then SIGKILL after `deadline`); return the exit code."""
        return self.process.stop(deadline)

    def restart(self, deadline: float = 5.0) -> int:
        """Stop this run and start the activator again with the same sockets and arguments; returns the
        stopped run's exit code. With held sockets nothing sent meanwhile is lost."""
        if self._launch is None:
            raise NetlabError("this forwarder cannot be restarted: it was not started by start_forwarder")
        code = self.stop(deadline)
        self.started = time.monotonic()
        self.process = self._launch()
        return code


def start_forwarder(  # noqa: PLR0913 - mirrors the forwarder command line
    node: LabNode,
    listen: Sequence[str],
    destinations: Sequence[str],
    *,
    fdnames: Sequence[str] | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    command_prefix: Sequence[str] = (),
    timeout: float = 10.0,
    program: Sequence[str] | None = None,
    sockets: HeldSockets | None = None,
) -> ForwarderUnderTest:
    """Start the forwarder in `node` under systemd-socket-activate listening on `listen` (ADDR:PORT each).

    With `sockets` (from hold_listen_sockets; `listen` may then be empty) the activator inherits the lab's
    sockets instead of binding its own. Returns once the activator holds every listening socket. The
    forwarder itself starts on the first datagram (as with a .socket unit); wait with `wait_ready()`.
    `program` replaces `python -m forwarder` (the benchmark starts other contenders the same way).
    `command_prefix` (e.g. a `setpriv ... --` that drops privileges) runs in front of it; it must exec,
    not fork, so that the forwarder keeps the pid LISTEN_PID names.
    """
    activate = shutil.which(SOCKET_ACTIVATE)
    if activate is None:
        raise ProcessFailedError(f"{SOCKET_ACTIVATE} not found: install the Debian package 'systemd'")
    if sockets is not None:
        if listen and list(listen) != sockets.listen:
            raise NetlabError(f"listen {list(listen)!r} differs from the held sockets' {sockets.listen!r}")
        if sockets.node is not node:
            raise NetlabError(f"the held sockets live in {sockets.node.name!r}, not in {node.name!r}")
        listen = sockets.listen
    lab = node.lab
    notify_path = lab.socket_dir / f"notify-{lab.next_serial()}.sock"
    receiver = NotifyReceiver(notify_path)
    lab.defer(receiver.close)
    argv = [activate, "--datagram"]
    if sockets is None:
        for address in listen:
            argv += ["-l", address]
    if fdnames:
        argv.append("--fdname=" + ":".join(fdnames))
    # systemd-socket-activate passes only a few variables on; the rest must be given with -E.
    child_env = {"NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": python_env()["PYTHONPATH"]}
    if not command_prefix:
        # Under `coverage run` (tox), the forwarder is measured too. Not behind a prefix: one that drops
        # privileges could not write the data, and one that traces system calls would see coverage's.
        child_env.update({key: os.environ[key] for key in COVERAGE_VARIABLES if key in os.environ})
    child_env.update(env or {})
    for key, value in child_env.items():
        argv += ["-E", f"{key}={value}"]
    argv += [*command_prefix, *(program or [sys.executable, "-m", "forwarder"]), *args, *destinations]
    if sockets is not None:
        fds = sockets.fds
        argv = [sys.executable, "-m", "netlab.programs.fdpass", ",".join(map(str, fds)), "--", *argv]
    else:
        fds = []
    wanted = {parse_endpoint(address)[1] for address in listen}

    def launch() -> Process:
        process = node.run(argv, label="forwarder", env=python_env(), pass_fds=fds)

        def listening() -> bool:
            if process.returncode is not None:
                raise ProcessFailedError(
                    f"{SOCKET_ACTIVATE} exited {process.returncode} before listening: {process.output()}"
                )
            return wanted <= udp_ports_bound(process.pid)

        if sockets is None:  # held sockets are listening already: a datagram waits in them for the child
            wait_until(listening, f"{SOCKET_ACTIVATE} to listen on {list(listen)}", timeout)
        return process

    return ForwarderUnderTest(launch(), receiver, list(listen), argv, sockets, _launch=launch)


__all__ = ["ForwarderUnderTest", "HeldSockets", "hold_listen_sockets", "start_forwarder"]
