"""sd_notify(3) with the standard library: one datagram per message to $NOTIFY_SOCKET.

Abstract sockets are written with a leading '@'. Without NOTIFY_SOCKET every call is a cheap no-op.
"""

import os
import socket
from collections.abc import Mapping

from forwarder.core.destination import decimal


class Notifier:
    """Sends state changes (READY=1, STATUS=..., WATCHDOG=1, STOPPING=1) to the service manager."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if path.startswith("@"):
            self._address = "\0" + path[1:]
        elif path.startswith("/"):
            self._address = path
        if self._address is not None:
            # Non-blocking: a manager that stops reading must never stall forwarding; that message is lost.
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            )

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str) -> bool:
        """Send KEY=VALUE lines in one datagram; returns False if there is no manager or it is gone."""
        if self._sock is None or self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when the watchdog is off or is
    meant for another process (WATCHDOG_PID set and not ours), per sd_watchdog_enabled(3)."""
    usec = decimal(environ.get("WATCHDOG_USEC", ""))
    if not usec:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid is not None and watchdog_pid != str(os.getpid() if pid is None else pid):
        return None
    return usec / 2_000_000
