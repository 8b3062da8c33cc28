"""The tproxy reply socket's side of the engine (--reply-tproxy): reading every reply with its client and
relaying it, a batch at a time (a base of FlowSide, whose reply batch, staging and sends it shares).

The rule here is that Python's work per reply is what a reply costs: a batch of replies is read with one
recvmmsg, their flows are found by their keys in one C loop (forwarder.core.reply_rules.steered_flows),
and a batch going to one listener is staged with a few slice stores and sent with one sendmmsg
(ReplyBatch.stage_run). A reply the machine has no key for, a flagged batch (truncated, control cut short)
or one for several listeners or a port range takes the slower path: each reply's client found in its
control messages, the machine's verdict, and staging one by one.
"""

import errno
import socket
from collections.abc import Callable
from typing import cast

from forwarder.core.actions import Drop
from forwarder.core.addresses import SockAddr
from forwarder.core.flows import Flow, Path
from forwarder.core.machine import ForwardingMachine
from forwarder.io.control import MSG_CTRUNC, origdst_first, origdst_in_control, origdst_local
from forwarder.io.listeners import Route
from forwarder.io.replies import ReplyBatch
from forwarder.io.reply_socket import ORIGDST_SPACE

# A reply socket is read until EAGAIN, but at most this many replies at a time.
MAX_STEERED = 256


class SteeredReplies:
    """The reply socket's methods (a base of FlowSide, which sets these fields)."""

    machine: ForwardingMachine
    reply_socket: socket.socket | None  # --reply-tproxy: the one socket every reply comes to
    _replies: ReplyBatch | None
    _reply_buffers: list[memoryview]
    _reply_view: memoryview
    _route_of: dict[Path, Route]
    _staged_of: dict[Path, list[tuple[Flow, int]]]
    _used: int
    # Per listener family: a reply source's raw address -> its raw control message (IP_PKTINFO).
    _source_controls: dict[int, dict[bytes, bytes]]

    log_drop: Callable[[Drop], None]  # Engine's: logs a drop the machine counted
    relay_from_port: Callable[[Flow, memoryview], None]  # Engine's: a port range's reply
    relay: Callable[[Flow, memoryview], None]  # FlowSide's: one reply, one send
    flush_replies: Callable[[], None]  # FlowSide's: the staged replies leave
    _send_group: Callable[[socket.socket, int, list[Flow]], None]  # FlowSide's: sendmmsg, failures counted
    _client_name: Callable[[int, SockAddr], bytes]  # FlowSide's: a decoded client's raw sockaddr

    def steered_pass(self, now: float) -> None:
        """The reply socket is readable: read up to MAX_STEERED replies, batched with recvmmsg, each with
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
        while handled < MAX_STEERED:
            wanted = min(batch.capacity, MAX_STEERED - handled)
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
        # (List comprehensions: a slot attribute read there is specialized, faster than attrgetter's.)
        if route is None or [flow.path for flow in flows].count(path) != len(flows):  # by identity
            return False
        count = len(flows)
        names = b"".join([flow.raw_peer for flow in flows])
        if len(names) != count * len(flows[0].raw_peer):
            return False
        controls = b""
        if route.pktinfo:
            known = self._source_controls.get(int(route.listener.sock.family))
            if known is None:
                return False
            locals_ = [flow.local_address for flow in flows]
            if None in locals_:
                return False
            found = list(map(known.get, cast("list[bytes]", locals_)))
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
        for _ in range(MAX_STEERED):
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
