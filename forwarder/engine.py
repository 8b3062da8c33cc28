"""The socket loop around the forwarding machine: a receive strategy drains each listening socket and asks
the machine what to do with every datagram; the engine does it (opens and closes flow sockets, sends, logs
drops, rate-limited) and reports back. It watches the flow sockets too: their error queues (ICMP errors
about the backend, in both modes) and, in relay mode, the backend's replies, which it sends to the client
from the listening socket the client used: one pass per loop turn over the flow sockets that are ready
(recvmmsg on each), then one sendmmsg per listener for every reply of the pass (forwarder.replies). It
keeps the service manager informed (READY, STATUS, WATCHDOG, STOPPING). Every decision and every count is
the machine's (forwarder.machine).
"""

import collections
import contextlib
import errno
import logging
import select
import selectors
import signal
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from forwarder import receive
from forwarder.activation import ListeningSocket
from forwarder.batch import BATCH
from forwarder.core import Counters, SockAddr, bounded_put, decode_sockaddr, plain_address, sockaddr_bytes
from forwarder.destination import Destination
from forwarder.endpoint import endpoint_text
from forwarder.icmp import (
    CONTROL_SIZE,
    MSG_ERRQUEUE,
    QueuedError,
    failed_by_pending_error,
    parse_queued_error,
)
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
from forwarder.rawsend import UDP_HEADER, RawSend
from forwarder.replies import ReplyBatch, source_control
from forwarder.sender import open_flow_socket, open_once_socket, open_plain_flow_socket, sharing_port
from forwarder.sockets import IP_PKTINFO, set_receive_buffer, set_receive_pktinfo

# Larger than any UDP payload (65507 B over IPv4, 65527 B over IPv6), so MSG_TRUNC means "not UDP-sized".
RECEIVE_BUFFER = 65536
# The longest single wait of the selector: epoll_wait takes int milliseconds (about 24.8 days at most), and
# a longer interval (--stats-interval 3e6) raised OverflowError. Waking once an hour costs nothing.
MAX_WAIT = 3600.0
# A flow socket is read until EAGAIN, but at most this many replies (or queued errors) at a time.
MAX_REPLIES = 256
# The receive queue of a relaying flow socket (SO_RCVBUFFORCE, as the units' ReceiveBuffer=4M): the default
# 208 KiB holds about 250 small replies, fewer than arrive while a listener is drained under load. A limit,
# not an allocation: memory is used only by replies waiting.
RELAY_FLOW_BUFFER = 4 << 20
# Signals that would otherwise end the process without STOPPING=1 or a last report; what each does is the
# README's "Signals" section. SIGTERM and SIGINT stop the loop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
OTHER_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)
# Raw sockaddrs of clients and control messages of reply sources, built once each (bounded).
NAME_CACHE_SIZE = 4096
# The selector's data of the one file descriptor that stands for every flow socket (their own epoll).
FLOW_SOCKETS = "flow sockets"

log = logging.getLogger("forwarder")


@dataclass(frozen=True, slots=True)
class Route:
    """Datagrams arriving on `listener` go to `destination`; `path` is how the machine knows the pair.
    With `pktinfo` (relay mode on a wildcard listener) each datagram's local address is read, so that the
    reply leaves from the address the client sent to."""

    listener: ListeningSocket
    destination: Destination
    pktinfo: bool = False
    path: Path = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        bound = self.listener.sock.getsockname()
        listen = (str(plain_address(str(bound[0]))), int(bound[1]))
        object.__setattr__(self, "path", Path(self.listener.label, self.destination, listen))


class _Client:
    """A drop's client for the log line, decoded only if the line is written."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes | None) -> None:
        self.raw = raw

    def __str__(self) -> str:
        return "?" if self.raw is None else endpoint_text(decode_sockaddr(self.raw))


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
        connect_flows: bool = False,
        gso: bool = False,
        raw: RawSend | None = None,
    ) -> None:
        self.routes = list(routes)
        self.notifier = notifier
        self.machine = machine if machine is not None else ForwardingMachine()
        self.stats_interval = stats_interval
        self.watchdog_interval = watchdog_interval
        self.repeats = RepeatSummary(log)
        # Connected flow sockets only carry replies in relay mode; in direct mode early demux would steal
        # the replies the host must forward (see forwarder.sender).
        self.connect_flows = (connect_flows and self.machine.relay) or self.machine.send_header
        # The raw send path (forwarder.rawsend): every datagram that is sent as its client leaves by one of
        # these sockets; flows keep a socket only in relay mode, to receive the replies.
        self.raw = None if self.machine.send_header else raw
        if self.raw is not None:
            self.raw.pending = self.raw_failed_by_pending_error
        self._targets = {route.destination.sockaddr for route in self.routes}
        for route in self.routes:
            if route.pktinfo:
                set_receive_pktinfo(route.listener.sock)
        self.strategy = receive.create(
            receive_strategy,
            self,
            batch,
            buffer_size,
            pktinfo=any(route.pktinfo for route in self.routes),
            connected=self.connect_flows,
            prefixed=self.machine.send_header,
            gso=gso,
            budget=receive.RELAY_BATCH if self.machine.relay else receive.MAX_BATCH,
            raw=self.raw,
        )
        self.metrics = metrics
        self._stopping = False
        self._signals: collections.deque[int] = collections.deque()  # received, not yet acted on
        self.interval_start = time.monotonic()  # of the interval the next STATUS= reports
        self._route_of = {route.path: route for route in self.routes}
        # Listening sockets by port: a flow socket bound to a client's address on one of them shares it.
        self._listeners_on: dict[int, list[socket.socket]] = {}
        for route in self.routes:
            sock = route.listener.sock
            self._listeners_on.setdefault(int(sock.getsockname()[1]), []).append(sock)
        self._reply_view = memoryview(bytearray(buffer_size))
        self._reply_buffers = [self._reply_view]
        self._pktinfo_control: dict[tuple[int, bytes], list[tuple[int, int, bytes]]] = {}
        # The flow sockets have an epoll of their own (watched by the selector as one descriptor): one pass
        # per loop turn over those ready, and EPOLLERR tells which have an error queue to read.
        self._flow_poll: select.epoll | None = None
        self._watched: dict[int, Flow] = {}
        # Relay mode gathers the replies of a pass and sends them with one sendmmsg per listener.
        self._replies = ReplyBatch.create(buffer_size=buffer_size) if self.machine.relay else None
        # The replies waiting to leave, per route (= listener): (the flow relayed to, the reply's slot).
        self._staged: list[tuple[Route, list[tuple[Flow, int]]]] = [(route, []) for route in self.routes]
        self._staged_of = {route.path: staged for route, staged in self._staged}
        self._used = 0  # slots of the reply batch filled in this pass
        self._target_names: dict[Path, bytes] = {}
        self._client_names: dict[tuple[int, SockAddr], bytes] = {}
        self._source_controls: dict[tuple[int, bytes], bytes] = {}

    @property
    def counters(self) -> Counters:
        return self.machine.counters

    @property
    def needs_capability(self) -> bool:
        """Whether anything after start-up needs a capability: a per-client transparent socket does (the
        sockets path, and relay mode's flow sockets, bound to the client's address); the raw path in direct
        mode does not (its sockets exist, and a local source's one-shot socket needs none), nor does
        --send-proxy-protocol (it sends from the host's own address)."""
        if self.machine.send_header:
            return False
        return self.raw is None or self.machine.relay

    def drain(self, route: Route) -> None:
        """Handle what is queued on `route`'s listening socket (up to the strategy's limit)."""
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

    def send(self, flow: Flow, payload: memoryview, header: bytearray | None = None) -> None:
        """The one place a datagram is sent on a flow's socket (runs of several leave by sendmmsg), after
        `header` (default: the flow's PROXY header, if it has one), or on the raw send path by the raw
        socket. A send failing with an ICMP error left pending by an earlier datagram is tried once more
        (forwarder.icmp.failed_by_pending_error)."""
        if flow.raw is not None:
            error_number = self.raw.send(flow, payload)  # type: ignore[union-attr]
            if error_number:
                self.log_drop(self.machine.send_failed(flow.path, flow.client, error_number))
            return
        if header is None:
            header = flow.header
        try:
            if header is not None:  # two iovecs: the header, then the payload (no copy)
                flow.handle.sendmsg((header, payload))  # type: ignore[union-attr]
            elif self.connect_flows:
                flow.handle.send(payload)  # type: ignore[union-attr]
            else:
                flow.handle.sendto(payload, flow.path.target)  # type: ignore[union-attr]
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
                    flow.handle.sendmsg((header, payload))  # type: ignore[union-attr]
                elif self.connect_flows:
                    flow.handle.send(payload)  # type: ignore[union-attr]
                else:
                    flow.handle.sendto(payload, flow.path.target)  # type: ignore[union-attr]
                return
            except OSError as error:
                error_number = error.errno or errno.EIO
        self.log_drop(self.machine.send_failed(flow.path, flow.client, error_number))

    def failed_by_pending_error(self, flow: Flow, error_number: int) -> bool:
        """A send on `flow` just failed with `error_number`: read (and count) its error queue, and say
        whether an earlier datagram's ICMP error is what failed it (then the datagram is sent again)."""
        return failed_by_pending_error(error_number, self.read_errors(flow))

    def _open_and_send(self, flow: Flow, payload: memoryview) -> None:
        if self.open(flow):
            self.send(flow, payload)

    def open(self, flow: Flow) -> bool:
        """Make `flow` ready to send and keep it: on the raw path its prebuilt message parts (and in relay
        mode a socket for its replies), else its own socket. False (the drop counted) when that failed."""
        if self.raw is not None:
            self.raw.prepare(flow)
            if not self.machine.relay:
                evicted = self.machine.flow_opened(flow, None)
                if evicted is not None:
                    self.close_flows(evicted)
                return True
        try:
            if self.machine.send_header:
                sock = open_plain_flow_socket(flow.path.destination.family, flow.path.target)
            else:
                peer = flow.path.target if self.connect_flows else None
                listeners = self._listeners_on.get(flow.source[1])
                if listeners:
                    with sharing_port(listeners):
                        sock = open_flow_socket(flow.source, flow.path.destination.family, peer)
                else:
                    sock = open_flow_socket(flow.source, flow.path.destination.family, peer)
        except OSError as error:
            self.log_drop(self.machine.open_failed(flow, error.errno or errno.EIO))
            return False
        if self.machine.relay:  # room for a burst of replies while a listener is drained
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
            sock = flow.handle
            if sock is None:
                continue
            self._unwatch(sock)
            if drain and self.machine.relay:
                self.read_errors(flow)
                self.machine.replies_unmatched(flow, _discard_queued(sock))
            flow.handle = None
            sock.close()

    def log_drop(self, drop: Drop) -> None:
        """Log a drop the machine counted: the first of its kind in an interval at once, the rest summed."""
        if drop.reply:
            self.repeats.report(
                drop.key,
                "dropped reply (%s) from %s to %s on %s",
                drop.key,
                drop.path.destination,
                _Client(drop.client),
                drop.path.name,
            )
            return
        self.repeats.report(
            drop.key,
            "dropped datagram (%s) from %s on %s to %s",
            drop.key,
            _Client(drop.client),
            drop.path.name,
            drop.path.destination,
        )

    # --- the flow sockets: errors, and the backend's replies -----------------------------------------------

    def _watch(self, flow: Flow, sock: socket.socket) -> None:
        """Have the loop watch `flow`'s socket (while it runs)."""
        if self._flow_poll is not None:
            self._flow_poll.register(sock.fileno(), select.EPOLLIN)
            self._watched[sock.fileno()] = flow

    def _unwatch(self, sock: socket.socket) -> None:
        """Stop watching a flow socket about to be closed (a flow opened before the loop never was)."""
        flow = self._watched.pop(sock.fileno(), None)
        if flow is not None and self._flow_poll is not None:
            with contextlib.suppress(OSError):
                self._flow_poll.unregister(sock.fileno())

    def flow_pass(self, now: float) -> None:
        """One pass over the flow sockets that are ready: their errors and replies; then the replies
        gathered leave, one sendmmsg per listener."""
        assert self._flow_poll is not None
        watched = self._watched
        for fd, events in self._flow_poll.poll(0):
            flow = watched.get(fd)
            if flow is not None:
                self.gather(flow, now, errors=bool(events & select.EPOLLERR))
        self.flush_replies()

    def flow_ready(self, flow: Flow, now: float) -> None:
        """`flow`'s socket is readable: count what its error queue holds, then relay (or count) replies."""
        self.gather(flow, now, errors=True)
        self.flush_replies()

    def gather(self, flow: Flow, now: float, *, errors: bool) -> None:
        """Read `flow`'s socket: its error queue first when it reported an error (`errors`), then up to
        MAX_REPLIES replies, batched with recvmmsg; replies to relay wait for flush_replies()."""
        sock = flow.handle
        if sock is None:  # closed since the selector reported it (evicted by a new flow)
            return
        if errors:
            self.read_errors(flow)
        batch = self._replies
        if batch is None:
            self._relay_each(flow, sock, now)
            return
        machine = self.machine
        fd = sock.fileno()
        target = self._target_name(flow.path)
        staged_of = self._staged_of
        handled = 0
        while handled < MAX_REPLIES:
            first = self._used
            wanted = min(batch.capacity - first, MAX_REPLIES - handled)
            try:
                count = batch.receive(fd, first, wanted)
            except OSError as error:  # a pending ICMP error: its details wait in the error queue
                handled += 1
                if not self.read_errors(flow):
                    self.log_drop(machine.reply_receive_failed(flow, error.errno or errno.EIO))
                continue
            for index in range(first, first + count):
                raw, size, flags = batch.received(index)
                source = flow.path.target if raw == target else decode_sockaddr(raw)
                action = machine.reply_received(flow, source, size, flags, now)
                if action.__class__ is Flow:
                    staged_of[action.path].append((action, index))
                else:
                    self.log_drop(action)  # type: ignore[arg-type]
            self._used = first + count
            handled += count
            if self._used == batch.capacity:
                self.flush_replies()
            if count < wanted:  # the queue is empty now (a reply arriving later wakes the loop again)
                return

    def flush_replies(self) -> None:
        """Send the replies gathered: one sendmmsg per listening socket, each message to its own client
        from the address that client sent to."""
        batch = self._replies
        self._used = 0
        if batch is None:
            return
        message = 0
        machine = self.machine
        for route, group in self._staged:
            if not group:
                continue
            family = int(route.listener.sock.family)  # an int: hashing an IntEnum runs Python code
            first = message
            staged: list[tuple[Flow, int]] = []
            for flow, index in group:
                control = b""
                if route.pktinfo and flow.local is not None:
                    if not flow.local:  # its datagram's control messages were cut short: source unknown
                        self.log_drop(machine.reply_send_failed(flow, errno.EADDRNOTAVAIL))
                        continue
                    control = self._source_control_raw(family, flow.local)
                batch.stage(message, index, self._client_name(family, flow.address), control)
                staged.append((flow, index))
                message += 1
            group.clear()
            if len(staged) == 1:  # a lone reply (a light load): the socket module's call is cheaper
                self.relay(staged[0][0], batch.payload(staged[0][1]))
                message = first
            elif staged:
                self._send_group(route.listener.sock, first, staged)

    def _send_group(self, listener: socket.socket, first: int, group: list[tuple[Flow, int]]) -> None:
        """sendmmsg the staged messages of `group` on `listener`; a message that fails is counted and the
        ones after it are still sent."""
        batch = self._replies
        assert batch is not None
        fd, done, count = listener.fileno(), 0, len(group)
        while done < count:
            sent, failure = batch.send(fd, first + done, count - done)
            done += sent
            if failure or not sent:
                self.log_drop(self.machine.reply_send_failed(group[done][0], failure or errno.EIO))
                done += 1

    def _target_name(self, path: Path) -> bytes:
        """The raw sockaddr `path`'s backend replies from, so a reply's source compares without decoding."""
        name = self._target_names.get(path)
        if name is None:
            name = self._target_names[path] = sockaddr_bytes(path.destination.family, path.target)
        return name

    def _client_name(self, family: int, address: SockAddr) -> bytes:
        name = self._client_names.get((family, address))
        if name is None:
            name = sockaddr_bytes(socket.AddressFamily(family), address)
            bounded_put(self._client_names, (family, address), name, NAME_CACHE_SIZE)
        return name

    def _source_control_raw(self, family: int, local: bytes) -> bytes:
        control = self._source_controls.get((family, local))
        if control is None:
            control = source_control(family, local)
            bounded_put(self._source_controls, (family, local), control, NAME_CACHE_SIZE)
        return control

    def _relay_each(self, flow: Flow, sock: socket.socket, now: float) -> None:
        """Without recvmmsg and sendmmsg (or in direct mode): one recvmsg and one send per reply."""
        machine = self.machine
        buffers, view = self._reply_buffers, self._reply_view
        for _ in range(MAX_REPLIES):
            try:
                size, _, flags, source = sock.recvmsg_into(buffers)
            except BlockingIOError:
                return
            except OSError as error:  # a pending ICMP error: its details wait in the error queue
                if not self.read_errors(flow):
                    self.log_drop(machine.reply_receive_failed(flow, error.errno or errno.EIO))
                continue
            action = machine.reply_received(flow, source, size, flags, now)
            if action.__class__ is Flow:
                self.relay(action, view[:size])
            else:
                self.log_drop(action)  # type: ignore[arg-type]

    def read_errors(self, flow: Flow) -> list[QueuedError | None]:
        """Read `flow`'s error queue; count (and log, rate-limited) each ICMP error; return the entries
        read (None for one that carried no error)."""
        sock = flow.handle
        read: list[QueuedError | None] = []
        while sock is not None and len(read) < MAX_REPLIES:
            try:
                _, ancillary, _, _ = sock.recvmsg(1, CONTROL_SIZE, MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                return read
            error = parse_queued_error(ancillary)
            read.append(error)
            if error is None:
                continue
            name = self.machine.icmp_error(flow, error)
            self.repeats.report(
                "icmp:" + name,
                "ICMP error (%s) from %s about datagrams of %s to %s on %s",
                name,
                error.offender or "?",
                _Client(flow.client),
                flow.path.destination,
                flow.path.name,
            )
        return read

    def read_raw_errors(self, sock: socket.socket) -> list[QueuedError | None]:
        """Read a raw send socket's error queue; return the entries read (None for one that carried no
        error). It gets the ICMP errors about every UDP datagram of the host, so only those about datagrams
        to a destination of ours are counted (and logged, rate-limited), and only in direct mode: in relay
        mode the flow's own socket gets the same error and counts it."""
        read: list[QueuedError | None] = []
        while len(read) < MAX_REPLIES:
            try:
                data, ancillary, _, offender = sock.recvmsg(UDP_HEADER, CONTROL_SIZE, MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                return read
            error = parse_queued_error(ancillary)
            read.append(error)
            if error is None or self.machine.relay or len(data) < UDP_HEADER:
                continue
            client_port, port = struct.unpack_from("!HH", data)
            backend = (str(plain_address(str(offender[0]))), port)
            if backend not in self._targets:
                continue
            name = self.machine.icmp_error(None, error)
            self.repeats.report(
                "icmp:" + name,
                "ICMP error (%s) from %s about datagrams of port %s to %s",
                name,
                error.offender or "?",
                client_port,
                f"{backend[0]}:{port}" if sock.family == socket.AF_INET else f"[{backend[0]}]:{port}",
            )
        return read

    def raw_failed_by_pending_error(self, sock: socket.socket, error_number: int) -> bool:
        """A send on the raw socket `sock` just failed with `error_number`: read its error queue, and say
        whether an earlier datagram's ICMP error is what failed it (the rule of every send path)."""
        return failed_by_pending_error(error_number, self.read_raw_errors(sock))

    def relay(self, flow: Flow, payload: memoryview) -> None:
        """Send a reply to `flow`'s client from the listening socket it used, from the address it sent to.
        When that address is unknown (its datagram's control messages were cut short) the reply is
        dropped rather than sent from an address the client did not ask."""
        route = self._route_of[flow.path]
        listener = route.listener.sock
        try:
            if route.pktinfo and flow.local is not None:
                if not flow.local:
                    raise OSError(errno.EADDRNOTAVAIL, "the address the client sent to is unknown")
                listener.sendmsg(
                    [payload], self._source_control(listener.family, flow.local), 0, flow.address
                )
            else:
                listener.sendto(payload, flow.address)
        except OSError as error:
            self.log_drop(self.machine.reply_send_failed(flow, error.errno or errno.EIO))

    def _source_control(self, family: int, local: bytes) -> list[tuple[int, int, bytes]]:
        """The IP_PKTINFO / IPV6_PKTINFO message choosing `local` as a reply's source (built once each)."""
        control = self._pktinfo_control.get((family, local))
        if control is None:
            if family == socket.AF_INET6:  # struct in6_pktinfo: the address, then ifindex 0 (any)
                control = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, local + bytes(4))]
            else:  # struct in_pktinfo: ifindex 0, ipi_spec_dst (the source), ipi_addr (ignored)
                control = [(socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + local + bytes(4))]
            bounded_put(self._pktinfo_control, (family, local), control, 1024)
        return control

    # --- the loop -------------------------------------------------------------------------------------------

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
        reported = False
        while self._signals:
            number = self._signals.popleft()
            if number == signal.SIGUSR1:
                log.info("SIGUSR1: reporting STATUS= and the metrics file now; a new interval starts")
                self.report_status()
                reported = True
            elif number == signal.SIGHUP:
                if self.metrics is not None and self.metrics.write(self.counters, len(self.machine.flows)):
                    log.info("SIGHUP: metrics file %r rewritten", str(self.metrics.path))
                log.info(
                    "SIGHUP: nothing else is reloaded (options are read at start: restart to change them)"
                )
            else:
                log.warning("%s ignored (SIGTERM or SIGINT stops the forwarder)", signal.Signals(number).name)
        return reported

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
        """Forward until asked to stop; then send STOPPING=1."""
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, self.stop) for sig in STOP_SIGNALS}
        previous.update({sig: signal.signal(sig, self._signalled) for sig in OTHER_SIGNALS})
        selector = selectors.DefaultSelector()
        try:
            for route in self.routes:
                selector.register(route.listener.sock, selectors.EVENT_READ, route)
            selector.register(wake_read, selectors.EVENT_READ, None)
            self._flow_poll = select.epoll()
            selector.register(self._flow_poll.fileno(), selectors.EVENT_READ, FLOW_SOCKETS)
            for sock in self.raw.sockets if self.raw is not None else ():  # their ICMP errors
                selector.register(sock, selectors.EVENT_READ, sock)
            for flow in self.machine.flows.values():  # opened before the loop (tests drain by hand)
                if flow.handle is not None:
                    self._watch(flow, flow.handle)
            self.interval_start = time.monotonic()
            self.notifier.notify(READY="1", STATUS="Up and running.")
            log.info(
                "forwarding %s", ", ".join(f"{r.listener.label} -> {r.destination}" for r in self.routes)
            )
            self._loop(selector, wake_read)
            self.report_status()  # the last, partial interval: its counts and repeated log lines are kept
            self.notifier.notify(STOPPING="1", STATUS="Stopping.")
        finally:
            selector.close()
            if self._flow_poll is not None:
                self._flow_poll.close()
                self._flow_poll = None
            self._watched.clear()
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
            if self._signals and self.handle_signals():
                next_report = time.monotonic() + self.stats_interval
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
                data = key.data
                if data is FLOW_SOCKETS:
                    self.flow_pass(time.monotonic())
                elif data is None:
                    _empty(wake_read)
                elif data.__class__ is socket.socket:
                    self.read_raw_errors(data)
                else:
                    strategy.drain(data, time.monotonic())


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


def _empty(sock: socket.socket) -> None:
    """Read the signal wake-up bytes so the selector stops reporting them."""
    while True:
        try:
            if not sock.recv(64):
                return
        except BlockingIOError:
            return
