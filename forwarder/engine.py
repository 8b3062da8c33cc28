"""The socket loop around the forwarding machine: a receive strategy drains each listening socket and asks
the machine what to do with every datagram; the engine does it (opens and closes flow sockets, sends, logs
drops, rate-limited) and reports back; it keeps the service manager informed (READY, STATUS, WATCHDOG,
STOPPING). Every decision and every count is the machine's (forwarder.machine).
"""

import errno
import logging
import selectors
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from forwarder import receive
from forwarder.activation import ListeningSocket
from forwarder.batch import BATCH
from forwarder.core import Counters, decode_sockaddr
from forwarder.destination import Destination
from forwarder.logs import RepeatSummary
from forwarder.machine import (
    Action,
    CloseFlows,
    Drop,
    Flow,
    ForwardingMachine,
    OpenFlow,
    Path,
    SendOnce,
)
from forwarder.metrics import MetricsFile
from forwarder.notify import Notifier
from forwarder.sender import open_flow_socket, open_once_socket

# Larger than any UDP payload (65507 B over IPv4, 65527 B over IPv6), so MSG_TRUNC means "not UDP-sized".
RECEIVE_BUFFER = 65536
# The longest single wait of the selector: epoll_wait takes int milliseconds (about 24.8 days at most), and
# a longer interval (--stats-interval 3e6) raised OverflowError. Waking once an hour costs nothing.
MAX_WAIT = 3600.0

log = logging.getLogger("forwarder")


@dataclass(frozen=True, slots=True)
class Route:
    """Datagrams arriving on `listener` go to `destination`; `path` is how the machine knows the pair."""

    listener: ListeningSocket
    destination: Destination
    path: Path = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.listener.label, self.destination))


class _Client:
    """A drop's client for the log line, decoded only if the line is written."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes | None) -> None:
        self.raw = raw

    def __str__(self) -> str:
        return "?" if self.raw is None else str(decode_sockaddr(self.raw))


class Engine:
    """Runs the forwarding loop until SIGTERM or SIGINT."""

    def __init__(
        self,
        routes: Sequence[Route],
        notifier: Notifier,
        machine: ForwardingMachine | None = None,
        *,
        receive_strategy: str = "batch",
        batch: int = BATCH,
        buffer_size: int = RECEIVE_BUFFER,
        stats_interval: float = 10.0,
        watchdog_interval: float | None = None,
        metrics: MetricsFile | None = None,
    ) -> None:
        self.routes = list(routes)
        self.notifier = notifier
        self.machine = machine if machine is not None else ForwardingMachine()
        self.stats_interval = stats_interval
        self.watchdog_interval = watchdog_interval
        self.repeats = RepeatSummary(log)
        self.strategy = receive.create(receive_strategy, self, batch, buffer_size)
        self.metrics = metrics
        self._stopping = False

    @property
    def counters(self) -> Counters:
        return self.machine.counters

    def drain(self, route: Route) -> None:
        """Handle what is queued on `route`'s listening socket (up to receive.MAX_BATCH datagrams)."""
        self.strategy.drain(route, time.monotonic())

    # --- executing the machine's actions ----------------------------------------------------------------

    def execute(self, route: Route, action: Action, payload: memoryview) -> None:
        """Do what the machine said for one datagram, and report how it went."""
        kind = action.__class__
        if kind is Flow:
            self.send(action, payload)  # type: ignore[arg-type]
        elif kind is OpenFlow:
            self._open_and_send(action.flow, payload)  # type: ignore[union-attr]
        elif kind is SendOnce:
            self._send_once(action, payload)  # type: ignore[arg-type]
        else:
            self.log_drop(action)  # type: ignore[arg-type]

    def send(self, flow: Flow, payload: memoryview) -> None:
        """The one place a datagram is sent on a flow's socket (runs of several leave by sendmmsg)."""
        try:
            flow.handle.sendto(payload, flow.path.target)  # type: ignore[union-attr]
        except OSError as error:
            self.log_drop(self.machine.send_failed(flow.path, flow.client, error.errno or errno.EIO))

    def _open_and_send(self, flow: Flow, payload: memoryview) -> None:
        try:
            sock = open_flow_socket(flow.source, flow.path.destination.family)
        except OSError as error:
            self.log_drop(self.machine.open_failed(flow, error.errno or errno.EIO))
            return
        evicted = self.machine.flow_opened(flow, sock)
        if evicted is not None:
            self.close_flows(evicted)
        self.send(flow, payload)

    def _send_once(self, action: SendOnce, payload: memoryview) -> None:
        try:
            with open_once_socket(action.source, action.path.destination.family) as sock:
                sock.sendto(payload, action.path.target)
        except OSError as error:
            self.log_drop(self.machine.send_once_failed(action, error.errno or errno.EIO))

    def close_flows(self, action: CloseFlows) -> None:
        """Close the sockets of flows the machine let go."""
        for flow in action.flows:
            if flow.handle is not None:
                flow.handle.close()

    def log_drop(self, drop: Drop) -> None:
        """Log a drop the machine counted: the first of its kind in an interval at once, the rest summed."""
        self.repeats.report(
            drop.key,
            "dropped datagram (%s) from %s on %s to %s",
            drop.key,
            _Client(drop.client),
            drop.path.name,
            drop.path.destination,
        )

    # --- the loop -------------------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Ask the loop to finish (signal handler for SIGTERM and SIGINT)."""
        self._stopping = True

    def report_status(self) -> None:
        """Send this interval's STATUS= line, summarise repeated log lines, start a new interval."""
        flows = len(self.machine.flows)
        if self.metrics is not None:  # first, so the file is current when STATUS= arrives
            self.metrics.write(self.counters, flows)
        self.notifier.notify(STATUS=self.counters.summary(self.stats_interval, flows))
        self.repeats.flush(self.stats_interval)
        self.counters.reset()

    def expire(self, now: float) -> int:
        """Close the flows the machine expires at `now`; return how many."""
        stale = self.machine.expire(now)
        self.close_flows(stale)
        return len(stale.flows)

    def close(self) -> None:
        """Close every flow socket."""
        self.close_flows(self.machine.close())

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
            log.info(
                "forwarding %s", ", ".join(f"{r.listener.label} -> {r.destination}" for r in self.routes)
            )
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
            self.close()

    def _loop(self, selector: selectors.BaseSelector, wake_read: socket.socket) -> None:
        now = time.monotonic()
        next_report = now + self.stats_interval
        sweep_interval = max(self.machine.flows.idle_timeout / 2, 0.01)
        next_sweep = now + sweep_interval
        next_watchdog = now if self.watchdog_interval is not None else float("inf")
        strategy = self.strategy
        while not self._stopping:
            now = time.monotonic()
            if now >= next_watchdog and self.watchdog_interval is not None:
                self.notifier.notify(WATCHDOG="1")
                next_watchdog = now + self.watchdog_interval
            if now >= next_report:
                self.report_status()
                next_report = now + self.stats_interval
            if now >= next_sweep:
                self.expire(now)
                next_sweep = now + sweep_interval
            timeout = max(0.0, min(next_report - now, next_sweep - now, next_watchdog - now, MAX_WAIT))
            for key, _ in selector.select(timeout):
                if key.data is None:
                    _empty(wake_read)
                else:
                    strategy.drain(key.data, time.monotonic())


def _empty(sock: socket.socket) -> None:
    """Read the signal wake-up bytes so the selector stops reporting them."""
    while True:
        try:
            if not sock.recv(64):
                return
        except BlockingIOError:
            return
