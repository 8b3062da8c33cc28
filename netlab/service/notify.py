"""The lab's side of sd_notify: a datagram socket the forwarder reports to, recording every READY /
STATUS / WATCHDOG / STOPPING with a timestamp, so tests wait for an event instead of sleeping.

A path socket, not an abstract one: abstract sockets belong to a network namespace, paths do not.
"""

import collections
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netlab.errors import LabTimeoutError, SystemCallError


@dataclass(frozen=True)
class NotifyEvent:
    """One KEY=VALUE a service sent, with the monotonic time it arrived."""

    time: float
    key: str
    value: str


class NotifyReceiver:
    """Listens on a path socket and records what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[NotifyEvent] = []
        self._condition = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._sock.bind(str(path))
        except OSError as error:
            self._sock.close()
            raise SystemCallError(
                error.errno, f"cannot listen for notifications on {str(path)!r}: {error}"
            ) from None
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name=f"notify-{path.name}", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                return
            if not data:
                if self._closed:
                    return
                continue
            now = time.monotonic()
            with self._condition:
                for line in data.decode(errors="replace").splitlines():
                    key, _, value = line.partition("=")
                    self.events.append(NotifyEvent(now, key, value))
                self._condition.notify_all()

    def summary(self) -> str:
        """What arrived, one line per distinct KEY=VALUE (in order of first arrival, with how many times):
        a forwarder repeats the same STATUS= line every interval, and a failure should show it once."""
        with self._condition:
            counts = collections.Counter(f"{event.key}={event.value}" for event in self.events)
        if not counts:
            return "    (nothing)"
        return "\n".join(
            f"    {line}" + (f"   (x{count})" if count > 1 else "") for line, count in counts.items()
        )

    def values(self, key: str) -> list[str]:
        """Every value received for `key`, oldest first."""
        with self._condition:
            return [event.value for event in self.events if event.key == key]

    def wait_for(
        self,
        key: str,
        value: str | Callable[[str], bool] | None = None,
        timeout: float = 10.0,
        after: float = 0.0,
        is_alive: Callable[[], bool] | None = None,
    ) -> NotifyEvent:
        """Wait until `key` (with `value`, or a value the predicate accepts) arrives after time `after`."""

        def matches(event: NotifyEvent) -> bool:
            if event.key != key or event.time < after:
                return False
            if value is None:
                return True
            return value(event.value) if callable(value) else event.value == value

        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for event in self.events:
                    if matches(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LabTimeoutError(
                        f"no {key}{'=' + value if isinstance(value, str) else ''} on {self.path} within "
                        f"{timeout}s; received so far:\n{self.summary()}"
                    )
                if is_alive is not None and not is_alive():
                    raise LabTimeoutError(
                        f"the sender exited before {key} arrived on {self.path}; received:\n{self.summary()}"
                    )
                self._condition.wait(min(remaining, 0.1) if is_alive is not None else remaining)

    def wait_ready(self, timeout: float = 10.0, after: float = 0.0) -> NotifyEvent:
        """Wait for READY=1."""
        return self.wait_for("READY", "1", timeout, after)

    def wait_status(
        self, predicate: Callable[[str], bool], timeout: float = 10.0, after: float = 0.0
    ) -> NotifyEvent:
        """Wait for a STATUS= line `predicate` accepts."""
        return self.wait_for("STATUS", predicate, timeout, after)

    def wait_watchdog(self, timeout: float = 10.0, after: float = 0.0) -> NotifyEvent:
        """Wait for a WATCHDOG=1 keep-alive."""
        return self.wait_for("WATCHDOG", "1", timeout, after)

    def wait_stopping(self, timeout: float = 10.0, after: float = 0.0) -> NotifyEvent:
        """Wait for STOPPING=1."""
        return self.wait_for("STOPPING", "1", timeout, after)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=2)
        self.path.unlink(missing_ok=True)
