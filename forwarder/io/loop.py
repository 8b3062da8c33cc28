"""The loop: wait until a listening socket, a flow socket, a raw socket or the signal wake-up fd is
readable or a timer is due, and hand each to the engine. The machine's own timer (the idle sweep) is asked
for (`next_deadline`, `on_timer`); STATUS= and WATCHDOG=1 are the service's timers, kept here. Signals are
noted by their handlers and acted on between two turns, never in the middle of counting.
"""

import collections
import logging
import pathlib
import selectors
import signal
import socket
import time
from typing import Protocol

from forwarder.core.actions import CloseFlows
from forwarder.core.counters import Counters
from forwarder.core.machine import ForwardingMachine
from forwarder.io.errorqueue import ErrorQueues
from forwarder.io.listeners import Route
from forwarder.io.rawsend import RawSend
from forwarder.io.receive import Strategy

# The longest single wait of the selector: epoll_wait takes int milliseconds (about 24.8 days at most), so a
# longer wait cannot be asked for at all. Waking once an hour costs nothing.
MAX_WAIT = 3600.0
# Signals that would otherwise end the process without STOPPING=1 or a last report; what each does is the
# README's "Signals" section. SIGTERM and SIGINT stop the loop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
OTHER_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)

# The selector's data of the one file descriptor that stands for every flow socket (their own epoll), and of
# the tproxy reply socket (--reply-tproxy).
FLOW_SOCKETS = "flow sockets"
REPLY_SOCKET = "reply socket"

log = logging.getLogger("forwarder")


class Manager(Protocol):
    """Where READY=, STATUS=, WATCHDOG= and STOPPING= go: the service manager (forwarder.service.notify)."""

    @property
    def enabled(self) -> bool: ...

    def notify(self, **fields: str) -> bool: ...


class Metrics(Protocol):
    """Where the counters are written at every report (forwarder.service.metrics)."""

    path: pathlib.Path

    def write(self, counters: Counters, flows: int) -> bool: ...


class Driven(Protocol):
    """What the loop drives: the engine (forwarder.io.engine)."""

    routes: list[Route]
    machine: ForwardingMachine
    strategy: Strategy
    notifier: Manager
    metrics: Metrics | None
    raw: RawSend | None
    reply_socket: socket.socket | None
    stats_interval: float
    watchdog_interval: float | None
    interval_start: float
    error_queues: ErrorQueues

    @property
    def counters(self) -> Counters: ...

    def flow_pass(self, now: float) -> None: ...

    def steered_pass(self, now: float) -> None: ...

    def watch_flow_sockets(self) -> int: ...

    def unwatch_flow_sockets(self) -> None: ...

    def report_status(self, now: float | None = None) -> None: ...

    def close_flows(self, action: CloseFlows, *, drain: bool = True) -> None: ...

    def close(self) -> None: ...


class Loop:
    """Runs the engine until SIGTERM or SIGINT."""

    def __init__(self, engine: Driven) -> None:
        self.engine = engine
        self._stopping = False
        self._signals: collections.deque[int] = collections.deque()  # received, not yet acted on

    def stop(self, *_: object) -> None:
        """Ask the loop to finish (signal handler for SIGTERM and SIGINT)."""
        self._stopping = True

    def _signalled(self, number: int, _frame: object) -> None:
        """Signal handler for OTHER_SIGNALS: only note it; the loop acts on it between two turns, never in
        the middle of counting (the wake-up fd ends the loop's wait)."""
        self._signals.append(number)

    def handle_signals(self) -> bool:
        """Act on the signals received since the last turn: SIGUSR1 reports now, SIGHUP rewrites the
        metrics file, SIGUSR2 and SIGALRM are ignored; each is logged. True when a report was sent."""
        engine = self.engine
        reported = False
        while self._signals:
            number = self._signals.popleft()
            if number == signal.SIGUSR1:
                log.info("SIGUSR1: reporting STATUS= and the metrics file now; a new interval starts")
                engine.report_status()
                reported = True
            elif number == signal.SIGHUP:
                if engine.metrics is not None and engine.metrics.write(
                    engine.counters, len(engine.machine.flows)
                ):
                    log.info("SIGHUP: metrics file %r rewritten", str(engine.metrics.path))
                log.info(
                    "SIGHUP: nothing else is reloaded (options are read at start: restart to change them)"
                )
            else:
                log.warning("%s ignored (SIGTERM or SIGINT stops the forwarder)", signal.Signals(number).name)
        return reported

    def run(self) -> None:
        """Forward until asked to stop; then send STOPPING=1."""
        engine = self.engine
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self.stop) for sig in STOP_SIGNALS}
        previous.update({sig: signal.signal(sig, self._signalled) for sig in OTHER_SIGNALS})
        selector = selectors.DefaultSelector()
        try:
            for route in engine.routes:
                selector.register(route.listener.sock, selectors.EVENT_READ, route)
            selector.register(wake_read, selectors.EVENT_READ, None)
            selector.register(engine.watch_flow_sockets(), selectors.EVENT_READ, FLOW_SOCKETS)
            for sock in engine.raw.sockets if engine.raw is not None else ():  # their ICMP errors
                selector.register(sock, selectors.EVENT_READ, sock)
            if engine.reply_socket is not None:
                selector.register(engine.reply_socket, selectors.EVENT_READ, REPLY_SOCKET)
            engine.interval_start = time.monotonic()
            engine.notifier.notify(READY="1", STATUS="Up and running.")
            log.info(
                "forwarding %s",
                ", ".join(f"{r.listener.label} -> {r.ports or r.destination}" for r in engine.routes),
            )
            self._loop(selector, wake_read)
            engine.report_status()  # the last, partial interval: its counts and repeated log lines are kept
            engine.notifier.notify(STOPPING="1", STATUS="Stopping.")
        finally:
            selector.close()
            engine.unwatch_flow_sockets()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_read.close()
            wake_write.close()
            engine.close()

    def _loop(self, selector: selectors.BaseSelector, wake_read: socket.socket) -> None:
        engine = self.engine
        machine = engine.machine
        now = time.monotonic()
        next_report = now + engine.stats_interval
        next_watchdog = now if engine.watchdog_interval is not None else float("inf")
        strategy = engine.strategy
        while not self._stopping:
            if self._signals and self.handle_signals():
                next_report = time.monotonic() + engine.stats_interval
            now = time.monotonic()
            if now >= next_watchdog and engine.watchdog_interval is not None:
                engine.notifier.notify(WATCHDOG="1")
                next_watchdog = now + engine.watchdog_interval
            if now >= next_report:
                engine.report_status()
                next_report = now + engine.stats_interval
            closing = machine.on_timer(now)
            if closing is not None:
                engine.close_flows(closing)
            due = min(next_report, machine.next_deadline(), next_watchdog)
            for key, _ in selector.select(max(0.0, min(due - now, MAX_WAIT))):
                data = key.data
                if data is FLOW_SOCKETS:
                    engine.flow_pass(time.monotonic())
                elif data is REPLY_SOCKET:
                    engine.steered_pass(time.monotonic())
                elif data is None:
                    _empty(wake_read)
                elif data.__class__ is socket.socket:
                    engine.error_queues.read_raw(data)
                else:
                    strategy.drain(data, time.monotonic())


def _empty(sock: socket.socket) -> None:
    """Read the signal wake-up bytes so the selector stops reporting them."""
    while True:
        try:
            if not sock.recv(64):
                return
        except BlockingIOError:
            return
