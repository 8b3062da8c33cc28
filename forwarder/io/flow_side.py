"""The flow sockets' side of the engine: watching them (an epoll of their own, one descriptor to the
loop's selector), reading their error queues when they report an error, and in relay mode the backend's
replies: one pass per loop turn over the ready ones (recvmmsg on each), then one sendmmsg per listener for
every reply of the pass (forwarder.io.replies), each from the address its client sent to. With
--reply-tproxy the replies of every flow come to the one reply socket instead (forwarder.io.reply_socket),
read by its own side (forwarder.io.steered, a base of this one), which shares the reply batch and sends.
"""

import contextlib
import errno
import select
import socket
from collections.abc import Callable

from forwarder.core.actions import Drop
from forwarder.core.addresses import SockAddr, decode_sockaddr, sockaddr_bytes
from forwarder.core.flows import Flow, Path, bounded_put
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import Settings
from forwarder.io.errorqueue import ErrorQueues
from forwarder.io.linux import IP_PKTINFO
from forwarder.io.listeners import Route
from forwarder.io.replies import ReplyBatch, source_control
from forwarder.io.reply_socket import ORIGDST_SPACE, key_layout
from forwarder.io.steered import SteeredReplies

# A flow socket is read until EAGAIN, but at most this many replies (or queued errors) at a time.
MAX_REPLIES = 256
# Raw sockaddrs of clients and control messages of reply sources, built once each (bounded).
NAME_CACHE_SIZE = 4096


class FlowSide(SteeredReplies):
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
        layout: dict[str, int] = {}
        if self.reply_socket is not None:
            name_space, key_control = key_layout(self.reply_socket.family)
            layout = {"control_space": ORIGDST_SPACE, "name_space": name_space, "key_control": key_control}
        self._replies = ReplyBatch.create(buffer_size=buffer_size, **layout) if self.settings.relays else None
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
