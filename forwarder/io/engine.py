"""The socket loop around the forwarding machine: a receive strategy drains each listening socket and asks
the machine what to do with every datagram; the engine does it (opens and closes flow sockets, sends, logs
drops, rate-limited) and reports back. It watches the flow sockets too: their error queues (ICMP errors
about the backend, in both modes) and, in relay mode, the backend's replies, which it sends to the client
from the listening socket the client used: one pass per loop turn over the flow sockets that are ready
(recvmmsg on each), then one sendmmsg per listener for every reply of the pass (forwarder.io.replies); with
--reply-tproxy every reply comes to one reply socket instead (forwarder.io.reply_socket), read the same
way. It keeps the service manager informed (READY, STATUS, WATCHDOG, STOPPING). Every decision and every
count is the machine's (forwarder.core.machine).
"""

import contextlib
import errno
import logging
import socket
import time
from collections.abc import Sequence

from forwarder.core.actions import Action, CloseFlows, Drop, OpenFlow, SendOnce
from forwarder.core.counters import Counters
from forwarder.core.flows import Flow
from forwarder.core.icmp import failed_by_pending_error
from forwarder.core.machine import ForwardingMachine
from forwarder.io import receive
from forwarder.io.batch import BATCH
from forwarder.io.errorqueue import ClientText, ErrorQueues
from forwarder.io.flow_side import MAX_REPLIES, FlowSide
from forwarder.io.flow_sockets import open_flow_socket, open_once_socket, open_plain_flow_socket, sharing_port
from forwarder.io.listeners import Route, backends_of
from forwarder.io.loop import Loop, Manager, Metrics
from forwarder.io.range_receive import RangeReceive
from forwarder.io.range_replies import PortReplies
from forwarder.io.rawsend import RawSend
from forwarder.io.repeats import RepeatSummary
from forwarder.io.sockets import set_receive_buffer, set_receive_origdst, set_receive_pktinfo

# Larger than any UDP payload (65507 B over IPv4, 65527 B over IPv6), so MSG_TRUNC means "not UDP-sized".
RECEIVE_BUFFER = 65536
# The receive queue of a relaying flow socket (SO_RCVBUFFORCE, as the units' ReceiveBuffer=4M): the default
# 208 KiB holds about 250 small replies, fewer than arrive while a listener is drained under load. A limit,
# not an allocation: memory is used only by replies waiting.
RELAY_FLOW_BUFFER = 4 << 20

log = logging.getLogger("forwarder")


class Engine(FlowSide):
    """Runs the forwarding loop until SIGTERM or SIGINT."""

    def __init__(  # noqa: PLR0913 - collaborators and two sizes tests shrink; every option is in Settings
        self,
        routes: Sequence[Route],
        notifier: Manager,
        machine: ForwardingMachine | None = None,
        *,
        watchdog_interval: float | None = None,
        metrics: Metrics | None = None,
        raw: RawSend | None = None,
        reply_socket: socket.socket | None = None,
        port_replies: PortReplies | None = None,
        batch: int = BATCH,
        buffer_size: int = RECEIVE_BUFFER,
    ) -> None:
        self.routes = list(routes)
        self.notifier = notifier
        self.machine = machine if machine is not None else ForwardingMachine()
        # The options, one object shared with the machine, so the two can never disagree.
        self.settings = settings = self.machine.settings
        self.stats_interval = settings.stats_interval
        self.watchdog_interval = watchdog_interval
        self.repeats = RepeatSummary(log)
        # The flow sockets' and raw sockets' error queues: ICMP errors counted, and the pending-error rule.
        self.error_queues = ErrorQueues(self.machine, self.repeats, backends_of(self.routes))
        # Connected flow sockets only carry replies in relay mode (see forwarder.io.flow_sockets); copied to
        # an attribute because every send reads it.
        self.connect_flows = settings.connects_flows
        # The raw send path (forwarder.io.rawsend): every datagram that is sent as its client leaves by one of
        # these sockets; flows keep a socket only in relay mode, to receive the replies.
        self.raw = raw if settings.binds_client else None
        if self.raw is not None:
            self.raw.pending = self.error_queues.raw_failed_by_pending_error
        for route in self.routes:
            if route.pktinfo:
                set_receive_pktinfo(route.listener.sock)
        self.strategy = receive.create(
            settings,
            self,
            batch,
            buffer_size,
            pktinfo=any(route.pktinfo for route in self.routes),
            raw=self.raw,
        )
        # Port ranges (TPROXY): their listeners tell each datagram's original destination, drained by a
        # strategy of their own; relay mode replies from the port asked (`port_replies`, raw sockets).
        self.port_replies = port_replies
        ranges = [route for route in self.routes if route.ports is not None]
        for route in ranges:
            set_receive_origdst(route.listener.sock)
            self.machine.serve_range(route.ports)  # type: ignore[arg-type]
        if ranges:
            self.strategy = RangeReceive(self.strategy, self, settings, batch, buffer_size, raw=self.raw)
        self.metrics = metrics
        self.interval_start = time.monotonic()  # of the interval the next STATUS= reports
        self._route_of = {route.path: route for route in self.routes}
        # Listening sockets by port: a flow socket bound to a client's address on one of them shares it.
        # --reply-tproxy: every reply comes to this one socket (forwarder.io.reply_socket), matched to its
        # flow by the machine from its source (a backend) and original destination (the client).
        self.reply_socket = reply_socket
        self._listeners_on: dict[int, list[socket.socket]] = {}
        for route in self.routes:
            sock = route.listener.sock
            self._listeners_on.setdefault(int(sock.getsockname()[1]), []).append(sock)
        self.init_flow_side(buffer_size)

    @property
    def counters(self) -> Counters:
        return self.machine.counters

    @property
    def needs_capability(self) -> bool:
        """Whether anything after start-up needs a capability: a per-client transparent socket does (the
        sockets path, and relay mode's flow sockets, bound to the client's address); the raw path in direct
        mode does not (its sockets exist, and a local source's one-shot socket needs none), nor does relay
        mode with --reply-tproxy (its reply socket exists too), nor --send-proxy-protocol (it sends from the
        host's own address)."""
        # The raw path asked for may have fallen back to per-client sockets (no CAP_NET_RAW): no raw here.
        return self.settings.binds_client and (self.raw is None or self.settings.replies_on_flow_sockets)

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

    def send(self, flow: Flow, payload: memoryview, header: bytearray | None = None) -> None:
        """The one place a datagram is sent on a flow's socket (runs of several leave by sendmmsg), after
        `header` (default: the flow's PROXY header, if it has one), or on the raw send path by the raw
        socket. A send failing with an ICMP error left pending by an earlier datagram is tried once more
        (forwarder.core.icmp.failed_by_pending_error)."""
        if flow.raw is not None:
            error_number = self.raw.send(flow, payload)  # type: ignore[union-attr]
            if error_number:
                self.log_drop(self.machine.send_failed(flow.path, flow.raw_peer, error_number))
            return
        if header is None:
            header = flow.header
        try:
            if header is not None:  # two iovecs: the header, then the payload (no copy)
                flow.socket.sendmsg((header, payload))  # type: ignore[union-attr]
            elif self.connect_flows:
                flow.socket.send(payload)  # type: ignore[union-attr]
            else:
                flow.socket.sendto(payload, flow.path.target)  # type: ignore[union-attr]
        except OSError as error:
            self._send_failed(flow, payload, header, error.errno or errno.EIO)

    def _send_failed(
        self, flow: Flow, payload: memoryview, header: bytearray | None, error_number: int
    ) -> None:
        """Sending on `flow` failed with `error_number`: send once more if an earlier datagram's ICMP error
        is what failed it, else (or if that fails too) count the drop."""
        if self.failed_by_pending_error(flow, error_number):
            try:
                if header is not None:
                    flow.socket.sendmsg((header, payload))  # type: ignore[union-attr]
                elif self.connect_flows:
                    flow.socket.send(payload)  # type: ignore[union-attr]
                else:
                    flow.socket.sendto(payload, flow.path.target)  # type: ignore[union-attr]
                return
            except OSError as error:
                error_number = error.errno or errno.EIO
        self.log_drop(self.machine.send_failed(flow.path, flow.raw_peer, error_number))

    def failed_by_pending_error(self, flow: Flow, error_number: int) -> bool:
        """A send on `flow` just failed with `error_number`: read (and count) its error queue, and say
        whether an earlier datagram's ICMP error is what failed it (then the datagram is sent again)."""
        return failed_by_pending_error(error_number, self.error_queues.read(flow))

    def _open_and_send(self, flow: Flow, payload: memoryview) -> None:
        if self.open(flow):
            self.send(flow, payload)

    def open(self, flow: Flow) -> bool:
        """Make `flow` ready to send and keep it: on the raw path its prebuilt message parts (and in relay
        mode a socket for its replies, unless they come to the reply socket), else its own socket. False
        (the drop counted) when that failed."""
        if self.raw is not None:
            self.raw.prepare(flow)
            if not self.settings.replies_on_flow_sockets:
                evicted = self.machine.flow_opened(flow, None)
                if evicted is not None:
                    self.close_flows(evicted)
                return True
        try:
            if not self.settings.binds_client:
                sock = open_plain_flow_socket(flow.path.destination.family, flow.path.target)
            else:
                peer = flow.path.target if self.connect_flows else None
                listeners = self._listeners_on.get(flow.presented[1])
                if listeners:
                    with sharing_port(listeners):
                        sock = open_flow_socket(flow.presented, flow.path.destination.family, peer)
                else:
                    sock = open_flow_socket(flow.presented, flow.path.destination.family, peer)
        except OSError as error:
            self.log_drop(self.machine.open_failed(flow, error.errno or errno.EIO))
            return False
        if self.settings.relays:  # room for a burst of replies while a listener is drained
            with contextlib.suppress(OSError):
                set_receive_buffer(sock, RELAY_FLOW_BUFFER)
        evicted = self.machine.flow_opened(flow, sock)
        if evicted is not None:
            self.close_flows(evicted)
        self._watch(flow, sock)
        return True

    def _send_once(self, action: SendOnce, payload: memoryview) -> None:
        # A fresh socket without IP_RECVERR, closed after this one datagram: no ICMP error can be pending on
        # it, so every failure is the datagram's own.
        try:
            with open_once_socket(action.source, action.path.destination.family) as sock:
                sock.sendto(payload, action.path.target)
        except OSError as error:
            self.log_drop(self.machine.send_once_failed(action, error.errno or errno.EIO))

    def close_flows(self, action: CloseFlows, *, drain: bool = True) -> None:
        """Close the sockets of flows the machine let go. In relay mode replies still queued on them are
        counted first (`drain`): they can never reach their client now."""
        for flow in action.flows:
            sock = flow.socket
            if sock is None:
                continue
            self._unwatch(sock)
            if drain and self.settings.relays:
                self.error_queues.read(flow)
                self.machine.replies_unmatched(flow, _discard_queued(sock))
            flow.socket = None
            sock.close()

    def relay_from_port(self, flow: Flow, payload: memoryview) -> None:
        """Relay a reply of a port range's flow from the address and port its client sent to."""
        error_number = (
            errno.EAFNOSUPPORT if self.port_replies is None else self.port_replies.send(flow, payload)
        )
        if error_number:
            self.log_drop(self.machine.reply_send_failed(flow, error_number))

    def log_drop(self, drop: Drop) -> None:
        """Log a drop the machine counted: the first of its kind in an interval at once, the rest summed."""
        if drop.path is None:  # a reply on the reply socket from none of our backends (or a failed read)
            self.repeats.report(
                drop.key, "dropped reply (%s) to %s on the reply socket", drop.key, ClientText(drop.client)
            )
            return
        if drop.reply:
            self.repeats.report(
                drop.key,
                "dropped reply (%s) from %s to %s on %s",
                drop.key,
                drop.path.destination,
                ClientText(drop.client),
                drop.path.name,
            )
            return
        self.repeats.report(
            drop.key,
            "dropped datagram (%s) from %s on %s to %s",
            drop.key,
            ClientText(drop.client),
            drop.path.name,
            drop.path.destination,
        )

    def report_status(self, now: float | None = None) -> None:
        """Send the STATUS= line of the interval that ends `now` (its real length, which can be longer than
        --stats-interval after a stall or SIGSTOP), summarise repeated log lines, start a new interval.
        Without a service manager to send it to, the line is logged at info level (else at debug)."""
        now = time.monotonic() if now is None else now
        seconds = round(max(now - self.interval_start, 0.0), 2)
        self.interval_start = now
        flows = len(self.machine.flows)
        if self.metrics is not None:  # first, so the file is current when STATUS= arrives
            self.metrics.write(self.counters, flows)
        line = self.counters.summary(seconds, flows)
        self.notifier.notify(STATUS=line)
        log.log(logging.DEBUG if self.notifier.enabled else logging.INFO, "status: %s", line)
        self.repeats.flush(seconds)
        self.counters.reset()

    def expire(self, now: float) -> int:
        """Close the flows the machine expires at `now`; return how many."""
        stale = self.machine.expire(now)
        self.close_flows(stale)
        return len(stale.flows)

    def close(self) -> None:
        """Close every flow socket (at shutdown: after the last STATUS=, nothing more is counted)."""
        self.close_flows(self.machine.close(), drain=False)

    def run(self) -> None:
        """Forward until SIGTERM or SIGINT; then send STOPPING=1 (forwarder.io.loop)."""
        Loop(self).run()


def _discard_queued(sock: socket.socket) -> int:
    """Read and drop every datagram queued on `sock` (its error queue was read before); return how many.
    Read to EAGAIN: the receive buffer bounds the work, and each one left behind would vanish uncounted."""
    count = errors = 0
    while errors < MAX_REPLIES:
        try:
            sock.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        except OSError:  # a pending socket error, reported once: the data behind it is still there
            errors += 1
            continue
        count += 1
    return count
