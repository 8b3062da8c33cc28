"""The socket side of the forwarder: receive on the listening sockets, re-send each datagram from a
transparent socket bound to the client's address, report status. Decisions come from forwarder.core.
"""

import errno
import logging
import selectors
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from forwarder.activation import ListeningSocket
from forwarder.core import Counters, DropReason, presentable_source
from forwarder.destination import Destination
from forwarder.notify import Notifier

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
# Larger than any UDP payload (65507 B over IPv4, 65527 B over IPv6), so MSG_TRUNC means "not UDP-sized".
RECEIVE_BUFFER = 65536

log = logging.getLogger("forwarder")


@dataclass(frozen=True, slots=True)
class Route:
    """Datagrams arriving on `listener` go to `destination`."""

    listener: ListeningSocket
    destination: Destination


def set_transparent(sock: socket.socket) -> None:
    """Allow `sock` to bind to a non-local (client) address; needs CAP_NET_ADMIN."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)


class Engine:
    """Runs the forwarding loop until SIGTERM or SIGINT."""

    def __init__(self, routes: Sequence[Route], notifier: Notifier, stats_interval: float = 10.0) -> None:
        self.routes = list(routes)
        self.notifier = notifier
        self.stats_interval = stats_interval
        self.counters = Counters()
        self._buffer = bytearray(RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._stopping = False
        self._logged: set[str] = set()

    def forward(self, route: Route, payload: memoryview, client: tuple[str, int]) -> None:
        """Send one datagram to the route's destination, presenting the client's address as source."""
        destination = route.destination
        source = presentable_source(client, destination.family)
        if isinstance(source, DropReason):
            self._drop(source, "", f"client {client[0]}:{client[1]}")
            return
        try:
            with socket.socket(destination.family, socket.SOCK_DGRAM) as out:
                set_transparent(out)
                out.bind(source)
                out.sendto(payload, destination.sockaddr)
        except OSError as error:
            name = errno.errorcode.get(error.errno or 0, str(error.errno))
            self._drop(DropReason.SEND_ERROR, name, f"{source[0]}:{source[1]} -> {destination}: {error}")
            return
        self.counters.forwarded += 1

    def _drop(self, reason: DropReason, detail: str, context: str) -> None:
        self.counters.drop(reason, detail)
        key = f"{reason.value}:{detail}"
        if key not in self._logged:  # once per status interval, so a flood cannot flood the log
            self._logged.add(key)
            log.warning("dropped datagram (%s%s): %s", reason.value, f" {detail}" if detail else "", context)

    def drain(self, route: Route) -> None:
        """Receive and forward until the socket would block."""
        sock = route.listener.sock
        while True:
            try:
                size, _, flags, client = sock.recvmsg_into([self._view])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.warning("receive on %s failed: %s", route.listener.name, error)
                return
            if flags & socket.MSG_TRUNC:
                self._drop(DropReason.TRUNCATED, "", f"client {client[0]}:{client[1]}")
                continue
            self.forward(route, self._view[:size], client)

    def stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> None:
        """Forward until asked to stop; then send STOPPING=1."""
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        selector = selectors.DefaultSelector()
        try:
            for route in self.routes:
                selector.register(route.listener.sock, selectors.EVENT_READ, route)
            selector.register(wake_read, selectors.EVENT_READ, None)
            self.notifier.notify(READY="1", STATUS="Up and running.")
            log.info("forwarding %s", ", ".join(f"{r.listener.name} -> {r.destination}" for r in self.routes))
            next_report = time.monotonic() + self.stats_interval
            while not self._stopping:
                timeout = max(0.0, next_report - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.data is None:
                        while True:
                            try:
                                if not wake_read.recv(64):
                                    break
                            except BlockingIOError:
                                break
                    else:
                        self.drain(key.data)
                if time.monotonic() >= next_report:
                    self.notifier.notify(STATUS=self.counters.summary(self.stats_interval))
                    self.counters.reset()
                    self._logged.clear()
                    next_report = time.monotonic() + self.stats_interval
            self.notifier.notify(STOPPING="1", STATUS="Stopping.")
        finally:
            selector.close()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_read.close()
            wake_write.close()
