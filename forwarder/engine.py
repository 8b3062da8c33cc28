"""The socket loop: receive on the listening sockets into one preallocated buffer, hand each datagram to
the Sender, count the outcome, and keep the service manager informed (READY, STATUS, WATCHDOG, STOPPING).
Decisions come from forwarder.core; sending as the client is forwarder.sender's job.
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
from forwarder.core import Counters, DropReason, drop_key
from forwarder.destination import Destination
from forwarder.logs import RepeatSummary
from forwarder.notify import Notifier
from forwarder.sender import Sender

# Larger than any UDP payload (65507 B over IPv4, 65527 B over IPv6), so MSG_TRUNC means "not UDP-sized".
RECEIVE_BUFFER = 65536
# A socket is drained until EAGAIN, but at most this many datagrams at a time, so that under a flood the
# other sockets, STATUS= and WATCHDOG=1 still get their turn (the selector reports the socket again).
MAX_BATCH = 4096

log = logging.getLogger("forwarder")


@dataclass(frozen=True, slots=True)
class Route:
    """Datagrams arriving on `listener` go to `destination`."""

    listener: ListeningSocket
    destination: Destination


class Engine:
    """Runs the forwarding loop until SIGTERM or SIGINT."""

    def __init__(
        self,
        routes: Sequence[Route],
        notifier: Notifier,
        sender: Sender,
        *,
        stats_interval: float = 10.0,
        watchdog_interval: float | None = None,
        buffer_size: int = RECEIVE_BUFFER,
    ) -> None:
        self.routes = list(routes)
        self.notifier = notifier
        self.sender = sender
        self.stats_interval = stats_interval
        self.watchdog_interval = watchdog_interval
        self.counters = Counters()
        self.repeats = RepeatSummary(log)
        self._view = memoryview(bytearray(buffer_size))
        self._stopping = False

    def _drop(self, reason: DropReason, detail: str, client: object, route: Route) -> None:
        self.counters.drop(reason, detail)
        key = drop_key(reason, detail)
        self.repeats.report(
            key,
            "dropped datagram (%s) from %s on %s to %s",
            key,
            client,
            route.listener.name,
            route.destination,
        )

    def drain(self, route: Route) -> None:
        """Receive and forward until the socket would block (or MAX_BATCH datagrams were handled)."""
        sock = route.listener.sock
        view = self._view
        buffers = [view]
        destination = route.destination
        send = self.sender.send
        counters = self.counters
        now = time.monotonic()
        for _ in range(MAX_BATCH):
            try:
                size, _, flags, client = sock.recvmsg_into(buffers)
            except BlockingIOError:
                return
            except OSError as error:
                name = errno.errorcode.get(error.errno or 0, str(error.errno))
                self._drop(DropReason.RECEIVE_ERROR, name, "?", route)
                return
            if flags & socket.MSG_TRUNC:
                self._drop(DropReason.TRUNCATED, "", client, route)
                continue
            outcome = send(view[:size], client, destination, now)
            if outcome is None:
                counters.forwarded += 1
            else:
                self._drop(outcome[0], outcome[1], client, route)

    def stop(self, *_: object) -> None:
        """Ask the loop to finish (signal handler for SIGTERM and SIGINT)."""
        self._stopping = True

    def report_status(self) -> None:
        """Send this interval's STATUS= line, summarise repeated log lines, start a new interval."""
        self.notifier.notify(STATUS=self.counters.summary(self.stats_interval, len(self.sender.flows)))
        self.repeats.flush(self.stats_interval)
        self.counters.reset()

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
            self._loop(selector, wake_read)
            self.report_status()  # the last, partial interval: its counts and repeated log lines are kept
            self.notifier.notify(STOPPING="1", STATUS="Stopping.")
        finally:
            selector.close()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_read.close()
            wake_write.close()
            self.sender.close()

    def _loop(self, selector: selectors.BaseSelector, wake_read: socket.socket) -> None:
        now = time.monotonic()
        next_report = now + self.stats_interval
        sweep_interval = max(self.sender.flows.idle_timeout / 2, 0.01)
        next_sweep = now + sweep_interval
        next_watchdog = now if self.watchdog_interval is not None else float("inf")
        while not self._stopping:
            now = time.monotonic()
            if now >= next_watchdog and self.watchdog_interval is not None:
                self.notifier.notify(WATCHDOG="1")
                next_watchdog = now + self.watchdog_interval
            if now >= next_report:
                self.report_status()
                next_report = now + self.stats_interval
            if now >= next_sweep:
                self.sender.expire(now)
                next_sweep = now + sweep_interval
            timeout = max(0.0, min(next_report, next_sweep, next_watchdog) - now)
            for key, _ in selector.select(timeout):
                if key.data is None:
                    _empty(wake_read)
                else:
                    self.drain(key.data)


def _empty(sock: socket.socket) -> None:
    """Read the signal wake-up bytes so the selector stops reporting them."""
    while True:
        try:
            if not sock.recv(64):
                return
        except BlockingIOError:
            return
