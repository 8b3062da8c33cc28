"""The flow sockets' side of the engine: watching them (an epoll of their own, one descriptor to the
loop's selector), reading their error queues when they report an error, and in relay mode the backend's
replies: one pass per loop turn over the ready ones (recvmmsg on each), then one sendmmsg per listener for
every reply of the pass (forwarder.io.replies), each from the address its client sent to. With
--reply-tproxy the replies of every flow come to the one reply socket instead (forwarder.io.reply_socket):
read in batches with their clients, matched by the machine, sent the same way.
"""

import contextlib
import errno
import operator
import select
import socket
from collections.abc import Callable
from typing import cast

from forwarder.core.actions import Drop
from forwarder.core.addresses import SockAddr, decode_sockaddr, sockaddr_bytes
from forwarder.core.flows import Flow, Path, bounded_put
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import Settings
from forwarder.io.control import MSG_CTRUNC, origdst_first, origdst_in_control, origdst_local
from forwarder.io.errorqueue import ErrorQueues
from forwarder.io.linux import IP_PKTINFO
from forwarder.io.listeners import Route
from forwarder.io.replies import ReplyBatch, source_control
from forwarder.io.reply_socket import ORIGDST_SPACE

# A flow socket is read until EAGAIN, but at most this many replies (or queued errors) at a time.
MAX_REPLIES = 256
# Raw sockaddrs of clients and control messages of reply sources, built once each (bounded).
NAME_CACHE_SIZE = 4096
# A batch's flows' listeners, sockaddrs and local addresses, read for all of them in C (map).
_PATH = operator.attrgetter("path")
_PEER = operator.attrgetter("raw_peer")
_LOCAL = operator.attrgetter("local_address")


class FlowSide:
    """The engine's flow-socket methods (a base of Engine, which sets these fields)."""

    machine: ForwardingMachine
    settings: Settings
    routes: list[Route]
    error_queues: ErrorQueues
    reply_socket: socket.socket | None  # --reply-tproxy: the one socket every reply comes to
    _route_of: dict[Path, Route]

    log_drop: Callable[[Drop], None]  # Engine's: logs a drop the machine counted
    relay_from_port: Callable[[Flow, memoryview], None]  # Engine's: a port range's reply

    def init_flow_side(self, buffer_size: int) -> None:
        """The buffers and caches of the flow side (reply buffers of `buffer_size` bytes)."""
        self._reply_view = memoryview(bytearray(buffer_size))
        self._reply_buffers = [self._reply_view]
        self._pktinfo_control: dict[tuple[int, bytes], list[tuple[int, int, bytes]]] = {}
        # The flow sockets have an epoll of their own (watched by the selector as one descriptor): one pass
        # per loop turn over those ready, and EPOLLERR tells which have an error queue to read.
        self._flow_poll: select.epoll | None = None
        self._watched: dict[int, Flow] = {}
        # Relay mode gathers the replies of a pass and sends them with one sendmmsg per listener.
        # The reply socket's replies carry their client in a control message: room for it per slot.
        control = ORIGDST_SPACE if self.reply_socket is not None else 0
        self._replies = (
            ReplyBatch.create(buffer_size=buffer_size, control_space=control)
            if self.settings.relays
            else None
        )
        # The replies waiting to leave, per route (= listener): (the flow relayed to, the reply's slot).
        self._staged: list[tuple[Route, list[tuple[Flow, int]]]] = [(route, []) for route in self.routes]
        self._staged_of = {route.path: staged for route, staged in self._staged}
        self._used = 0  # slots of the reply batch filled in this pass
        self._target_names: dict[Path, bytes] = {}
        self._client_names: dict[tuple[int, SockAddr], bytes] = {}
        # Per listener family: a reply source's raw address -> its raw control message (IP_PKTINFO).
        self._source_controls: dict[int, dict[bytes, bytes]] = {}

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
        sock = flow.socket
        if sock is None:  # closed since the selector reported it (evicted by a new flow)
            return
        if errors:
            self.error_queues.read(flow)
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
                if not self.error_queues.read(flow):
                    self.log_drop(machine.reply_receive_failed(flow, error.errno or errno.EIO))
                continue
            for index in range(first, first + count):
                raw, size, flags = batch.received(index)
                source = flow.path.target if raw == target else decode_sockaddr(raw)
                action = machine.reply_received(flow, source, size, flags, now)
                if action.__class__ is Flow:
                    staged = staged_of.get(action.path)
                    if staged is None:  # a port range's flow: its reply leaves from the port asked, now
                        self.relay_from_port(action, batch.payload(index))
                    else:
                        staged.append((action, index))
                else:
                    self.log_drop(action)  # type: ignore[arg-type]
            self._used = first + count
            handled += count
            if self._used == batch.capacity:
                self.flush_replies()
            if count < wanted:  # the queue is empty now (a reply arriving later wakes the loop again)
                return

    def steered_pass(self, now: float) -> None:
        """The reply socket is readable: read up to MAX_REPLIES replies, batched with recvmmsg, each with
        its client (its original destination); the machine says whose each one is; then they leave, one
        sendmmsg per listener and batch."""
        sock = self.reply_socket
        batch = self._replies
        assert sock is not None
        if batch is None:
            self._steered_each(sock, now)
            return
        if self._used:  # replies of flow sockets staged (never with a reply socket): theirs go first
            self.flush_replies()
        fd = sock.fileno()
        handled = 0
        while handled < MAX_REPLIES:
            wanted = min(batch.capacity, MAX_REPLIES - handled)
            try:
                count = batch.receive(fd, 0, wanted)
            except OSError as error:
                handled += 1
                self.log_drop(self.machine.steered_receive_failed(error.errno or errno.EIO))
                continue
            if count:
                self._steered_batch(batch, count, now)
            handled += count
            if count < wanted:
                break

    def _steered_batch(self, batch: ReplyBatch, count: int, now: float) -> None:
        """Slots 0..count-1 hold steered replies: each to its flow's client, and away. Their flows are
        found a batch at a time by the keys the machine learned (a reply it has not, or a flagged batch,
        one at a time); a batch that goes to one listener is staged at once, any other one by one."""
        if batch.flagged(0, count):  # truncated, or control messages cut short: each on its own
            flows: list[Flow | None] = [None] * count
            found = 0
        else:
            flows, found = self.machine.steered_flows(batch.keys(0, count), now)
        if found < count:
            for index, known in enumerate(flows):
                if known is None:
                    flows[index] = matched = self._steered_match(batch, index, now)
                    found += matched is not None
        if found < count or not self._relay_run(batch, cast("list[Flow]", flows)):
            self._stage_each(batch, flows)
        self.flush_replies()

    def _steered_match(self, batch: ReplyBatch, index: int, now: float) -> Flow | None:
        """Slot `index`'s steered reply, which the batch's keys did not match: the machine's verdict from
        its source and client, learning the slot's key when the client is where keys read it (the first
        control message); None when it is dropped (counted and logged)."""
        raw, size, flags = batch.received(index)
        control = batch.control(index)
        client = None if flags & MSG_CTRUNC else origdst_first(control)
        if client is None:  # elsewhere in the control messages (or they were cut short): the walk decides
            client = origdst_in_control(control, flags)
            action = self.machine.reply_arrived(raw, client, size, flags, now)
        else:
            action = self.machine.reply_arrived(raw, client, size, flags, now, key=batch.key(index))
        if action.__class__ is Flow:
            return action
        self.log_drop(action)  # type: ignore[arg-type]
        return None

    def _relay_run(self, batch: ReplyBatch, flows: list[Flow]) -> bool:
        """Send slots 0.. to `flows` (one each) with one sendmmsg when they all go through one listening
        socket with sockaddrs and source controls of one size (the common case); False when not (nothing
        is sent: the caller stages them one by one)."""
        path = flows[0].path
        route = self._route_of.get(path)
        if route is None or len(set(map(_PATH, flows))) != 1:
            return False
        count = len(flows)
        names = b"".join(map(_PEER, flows))
        if len(names) != count * len(flows[0].raw_peer):
            return False
        controls = b""
        if route.pktinfo:
            known = self._source_controls.get(int(route.listener.sock.family))
            if known is None:
                return False
            locals_ = list(map(_LOCAL, flows))
            if None in locals_:
                return False
            found = list(map(known.get, locals_))
            if None in found:  # a source not seen yet, or unknown (control messages cut short)
                return False
            controls = b"".join(found)  # type: ignore[arg-type]
            if len(controls) != count * len(found[0]):  # type: ignore[arg-type]
                return False
        if count == 1:  # a lone reply (a light load): the socket module's call is cheaper
            self.relay(flows[0], batch.payload(0))
            return True
        batch.stage_run(0, count, names, controls)
        self._send_group(route.listener.sock, 0, flows)
        return True

    def _stage_each(self, batch: ReplyBatch, flows: list[Flow | None]) -> None:
        """Stage slots 0.. one by one to `flows` (None: dropped) for flush_replies; a port range's reply
        leaves from the port asked, now."""
        staged_of = self._staged_of
        for index, flow in enumerate(flows):
            if flow is None:
                continue
            staged = staged_of.get(flow.path)
            if staged is None:
                self.relay_from_port(flow, batch.payload(index))
            else:
                staged.append((flow, index))
        self._used = len(flows)

    def _steered_each(self, sock: socket.socket, now: float) -> None:
        """Without recvmmsg and sendmmsg: one recvmsg and one send per steered reply."""
        machine = self.machine
        buffers, view = self._reply_buffers, self._reply_view
        for _ in range(MAX_REPLIES):
            try:
                size, ancillary, flags, source = sock.recvmsg_into(buffers, ORIGDST_SPACE)
            except BlockingIOError:
                return
            except OSError as error:
                self.log_drop(machine.steered_receive_failed(error.errno or errno.EIO))
                continue
            family = socket.AF_INET6 if ":" in str(source[0]) else socket.AF_INET
            raw = self._client_name(family, source)
            action = machine.reply_arrived(raw, origdst_local(ancillary, flags), size, flags, now)
            if action.__class__ is Flow:
                self.relay(action, view[:size])
            else:
                self.log_drop(action)  # type: ignore[arg-type]

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
                if route.pktinfo and flow.local_address is not None:
                    if (
                        not flow.local_address
                    ):  # its datagram's control messages were cut short: source unknown
                        self.log_drop(machine.reply_send_failed(flow, errno.EADDRNOTAVAIL))
                        continue
                    control = self._source_control_raw(family, flow.local_address)
                # The flow's latest sender as it was received on this listener: already the sockaddr to
                # send to (no encoding, no lookup per reply).
                batch.stage(message, index, flow.raw_peer, control)
                staged.append((flow, index))
                message += 1
            group.clear()
            if len(staged) == 1:  # a lone reply (a light load): the socket module's call is cheaper
                self.relay(staged[0][0], batch.payload(staged[0][1]))
                message = first
            elif staged:
                self._send_group(route.listener.sock, first, [flow for flow, _ in staged])

    def _send_group(self, listener: socket.socket, first: int, flows: list[Flow]) -> None:
        """sendmmsg the staged messages first.. to `flows` on `listener`; a message that fails is counted
        and the ones after it are still sent."""
        batch = self._replies
        assert batch is not None
        fd, done, count = listener.fileno(), 0, len(flows)
        while done < count:
            sent, failure = batch.send(fd, first + done, count - done)
            done += sent
            if failure or not sent:
                self.log_drop(self.machine.reply_send_failed(flows[done], failure or errno.EIO))
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
        known = self._source_controls.get(family)
        if known is None:
            known = self._source_controls[family] = {}
        control = known.get(local)
        if control is None:
            control = source_control(family, local)
            bounded_put(known, local, control, NAME_CACHE_SIZE)
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
                if not self.error_queues.read(flow):
                    self.log_drop(machine.reply_receive_failed(flow, error.errno or errno.EIO))
                continue
            action = machine.reply_received(flow, source, size, flags, now)
            if action.__class__ is Flow:
                self.relay(action, view[:size])
            else:
                self.log_drop(action)  # type: ignore[arg-type]

    def relay(self, flow: Flow, payload: memoryview) -> None:
        """Send a reply to `flow`'s client from the listening socket it used, from the address it sent to.
        When that address is unknown (its datagram's control messages were cut short) the reply is
        dropped rather than sent from an address the client did not ask."""
        route = self._route_of.get(flow.path)
        if route is None:  # a port range's flow (forwarder.io.range_replies)
            self.relay_from_port(flow, payload)
            return
        listener = route.listener.sock
        try:
            if route.pktinfo and flow.local_address is not None:
                if not flow.local_address:
                    raise OSError(errno.EADDRNOTAVAIL, "the address the client sent to is unknown")
                listener.sendmsg(
                    [payload], self._source_control(listener.family, flow.local_address), 0, flow.peer
                )
            else:
                listener.sendto(payload, flow.peer)
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

    # --- the loop's service timers ---------------------------------------------------------------------

    def watch_flow_sockets(self) -> int:
        """Give the flow sockets an epoll of their own while the loop runs (those opened before it too);
        return its file descriptor, which the loop's selector watches as one."""
        self._flow_poll = select.epoll()
        for flow in self.machine.flows.values():  # opened before the loop (tests drain by hand)
            if flow.socket is not None:
                self._watch(flow, flow.socket)
        return self._flow_poll.fileno()

    def unwatch_flow_sockets(self) -> None:
        """The loop has ended: the flow sockets' epoll goes."""
        if self._flow_poll is not None:
            self._flow_poll.close()
            self._flow_poll = None
        self._watched.clear()
