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
from forwarder.batch import MSG_TRUNC, NAME_LENGTH, BatchReceiver, BatchSender, decode_sockaddr
from forwarder.core import Counters, DropReason, drop_key
from forwarder.destination import Destination
from forwarder.logs import RepeatSummary
from forwarder.metrics import MetricsFile
from forwarder.notify import Notifier
from forwarder.sender import Sender, errno_name

# Larger than any UDP payload (65507 B over IPv4, 65527 B over IPv6), so MSG_TRUNC means "not UDP-sized".
RECEIVE_BUFFER = 65536
# A socket is drained until EAGAIN, but at most this many datagrams at a time, so that under a flood the
# other sockets, STATUS= and WATCHDOG=1 still get their turn (the selector reports the socket again).
MAX_BATCH = 4096
# The longest single wait of the selector: epoll_wait takes int milliseconds (about 24.8 days at most), and
# a longer interval (--stats-interval 3e6) raised OverflowError. Waking once an hour costs nothing.
MAX_WAIT = 3600.0

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
        receiver: BatchReceiver | None = None,
        metrics: MetricsFile | None = None,
    ) -> None:
        self.routes = list(routes)
        self.notifier = notifier
        self.sender = sender
        self.stats_interval = stats_interval
        self.watchdog_interval = watchdog_interval
        self.counters = Counters()
        self.repeats = RepeatSummary(log)
        self._view = memoryview(bytearray(buffer_size))
        self.receiver = receiver
        self.batch_sender = BatchSender.create(receiver) if receiver is not None else None
        self.drain = self.drain_batch if receiver is not None else self.drain_single
        self.metrics = metrics
        self._stopping = False

    def _drop(self, reason: DropReason, detail: str, client: object, route: Route) -> None:
        self.counters.drop(reason, detail)
        key = drop_key(reason, detail)
        self.repeats.report(
            key,
            "dropped datagram (%s) from %s on %s to %s",
            key,
            client,
            route.listener.label,
            route.destination,
        )

    def drain_single(self, route: Route) -> None:
        """Receive (one datagram per call) and forward until the socket would block, or MAX_BATCH."""
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

    def drain_batch(self, route: Route) -> None:
        """Receive with recvmmsg and forward until the socket would block, or MAX_BATCH datagrams.

        This is the hot path. A datagram whose flow is open costs a flow-key lookup; consecutive datagrams
        of one flow leave in one sendmmsg (a lone one with sendto). New flows, drops and errors
        go through the Sender and _drop as on the slow path.
        """
        receiver = self.receiver
        assert receiver is not None
        fd = route.listener.sock.fileno()
        name_length = NAME_LENGTH[route.listener.family]
        destination = route.destination
        target = destination.sockaddr
        flow = self.sender.flows.get
        send_raw = self.sender.send_raw
        u32, data, names, slots = receiver.u32, receiver.view, receiver.name_view, receiver.slots
        if self.batch_sender is not None:
            self.batch_sender.aim(destination.family, target)
        now = time.monotonic()
        handled = 0
        while handled < MAX_BATCH:
            try:
                count = receiver.receive(fd)
            except OSError as error:
                self._drop(DropReason.RECEIVE_ERROR, errno_name(error), "?", route)
                return
            # A run: consecutive datagrams (run_first, run_first + run_length) of the flow socket run_sock.
            run_sock: socket.socket | None = None
            run_first = run_length = 0
            for index, (length, flags, name, offset) in enumerate(slots[:count]):
                if u32[flags] & MSG_TRUNC:
                    self._drop(
                        DropReason.TRUNCATED, "", decode_sockaddr(names[name : name + name_length]), route
                    )
                    continue
                raw = bytes(names[name : name + name_length])
                sock = flow((target, raw), now)
                # A run covers consecutive slots only: a slot dropped in between ends it, so a run can never
                # stretch over a datagram of another client.
                if sock is not None and sock is run_sock and index == run_first + run_length:
                    run_length += 1
                    continue
                if run_sock is not None:
                    self._send_run(route, run_sock, run_first, run_length)
                    run_sock = None
                if sock is not None:
                    run_sock, run_first, run_length = sock, index, 1
                    continue
                # A new flow; opening it may evict (close) others, so no run is pending here.
                outcome = send_raw(data[offset : offset + u32[length]], raw, destination, now)
                if outcome is None:
                    self.counters.forwarded += 1
                else:
                    self._drop(outcome[0], outcome[1], decode_sockaddr(raw), route)
            if run_sock is not None:
                self._send_run(route, run_sock, run_first, run_length)
            handled += count
            if count < receiver.batch:
                return

    def _send_run(self, route: Route, sock: socket.socket, first: int, length: int) -> None:
        """Send received datagrams first..first+length-1 (one open flow); count or drop each one."""
        receiver = self.receiver
        assert receiver is not None
        batch_sender = self.batch_sender
        while length:
            if length == 1 or batch_sender is None:
                slot = receiver.slots[first]
                try:
                    sock.sendto(
                        receiver.view[slot.data : slot.data + receiver.u32[slot.length]],
                        route.destination.sockaddr,
                    )
                except OSError as error:
                    self._drop_slot(route, first, errno_name(error))
                else:
                    self.counters.forwarded += 1
                first, length = first + 1, length - 1
                continue
            sent, error_number = batch_sender.send_run(sock.fileno(), first, length)
            self.counters.forwarded += sent
            first, length = first + sent, length - sent
            if error_number:
                self._drop_slot(route, first, errno_name(OSError(error_number, "")))
                first, length = first + 1, length - 1

    def _drop_slot(self, route: Route, index: int, detail: str) -> None:
        receiver = self.receiver
        assert receiver is not None
        start = receiver.slots[index].name
        raw = receiver.name_view[start : start + NAME_LENGTH[route.listener.family]]
        self._drop(DropReason.SEND_ERROR, detail, decode_sockaddr(raw), route)

    def stop(self, *_: object) -> None:
        """Ask the loop to finish (signal handler for SIGTERM and SIGINT)."""
        self._stopping = True

    def report_status(self) -> None:
        """Send this interval's STATUS= line, summarise repeated log lines, start a new interval."""
        if self.metrics is not None:  # first, so the file is current when STATUS= arrives
            self.metrics.update(self.counters, len(self.sender.flows))
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
            timeout = max(0.0, min(next_report - now, next_sweep - now, next_watchdog - now, MAX_WAIT))
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
