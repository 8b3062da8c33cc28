"""The two receive strategies behind one interface, `drain(route, now)`: `single` (one recvmsg per
datagram, the standard library only) and `batch` (recvmmsg through ctypes, and consecutive datagrams of
one flow out with one sendmmsg). Both give the machine the same metadata, with the client as its raw struct
sockaddr, the one flow key; everything but a hit goes to the executor (the engine).
"""

import logging
from typing import TYPE_CHECKING, Protocol

from forwarder.core.actions import READ_HEADER, Action, Drop, OpenFlow
from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.flows import Flow, bounded_put
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import MAX_BATCH, Settings
from forwarder.io.batch import NAME_LENGTH, BatchReceiver, BatchSender
from forwarder.io.control import (
    CONTROL_SPACE,
    CONTROL_TRUNCATED,
    UNKNOWN_LOCAL,
    pktinfo_in_control,
    pktinfo_local,
)
from forwarder.io.gso import MAX_PAYLOAD, plan_runs

if TYPE_CHECKING:
    from forwarder.io.listeners import Route
    from forwarder.io.rawsend import RawFlow, RawSend

# Raw sockaddrs of recent clients on the single path, so that a hit costs a dict lookup, not an encoding.
NAME_CACHE_SIZE = 4096

log = logging.getLogger("forwarder")


class Executor(Protocol):
    """What a strategy needs of the engine: do an action, send on a flow, log a drop."""

    machine: ForwardingMachine

    def execute(self, route: "Route", action: Action, payload: memoryview) -> None: ...

    def send(self, flow: Flow, payload: memoryview, header: bytearray | None = None) -> None: ...

    def failed_by_pending_error(self, flow: Flow, error_number: int) -> bool: ...

    def open(self, flow: Flow) -> bool: ...

    def log_drop(self, drop: Drop) -> None: ...


class Strategy(Protocol):
    """Receive what is queued on a route's listening socket and get every datagram handled."""

    def drain(self, route: "Route", now: float) -> None: ...


def flush_raw(raw: "RawSend", executor: Executor) -> None:
    """Send the batch queued on the raw path (one sendmmsg per family); count each datagram that failed."""
    failed = raw.flush()
    if failed:
        machine = executor.machine
        for flow, error_number in failed:
            executor.log_drop(machine.send_failed(flow.path, flow.raw_peer, error_number))
        failed.clear()


class SingleReceive:
    """One recvmsg per datagram into one preallocated buffer."""

    def __init__(self, executor: Executor, buffer_size: int, budget: int = MAX_BATCH) -> None:
        self.executor = executor
        self.budget = budget  # datagrams per drain at most
        self._view = memoryview(bytearray(buffer_size))
        self._names: dict[object, bytes] = {}

    def drain(self, route: "Route", now: float) -> None:
        """Receive and handle until the socket would block, or `budget` datagrams."""
        sock = route.listener.sock
        family = sock.family
        path = route.path
        view = self._view
        buffers = [view]
        names = self._names
        executor = self.executor
        receive = executor.machine.receive
        control = CONTROL_SPACE if route.pktinfo else 0
        for _ in range(self.budget):
            try:
                size, ancillary, flags, client = sock.recvmsg_into(buffers, control)
            except BlockingIOError:
                return
            except OSError as error:
                executor.log_drop(executor.machine.receive_failed(path, error.errno or 0))
                return
            raw = names.get(client)
            if raw is None:
                raw = sockaddr_bytes(family, client)
                bounded_put(names, client, raw, NAME_CACHE_SIZE)
            local = pktinfo_local(ancillary, family, flags) if control else None
            if local is UNKNOWN_LOCAL:
                CONTROL_TRUNCATED(route.listener.label)
            if local is not None:
                action = receive(path, raw, size, flags, now, local=local)
            else:
                action = receive(path, raw, size, flags, now)
            skip = 0
            if action is READ_HEADER:
                action, skip = executor.machine.receive_proxied(
                    path, raw, view[:size], flags, now, local=local
                )
            if action.__class__ is Flow:
                executor.send(action, view[skip:size])
            else:
                executor.execute(route, action, view[skip:size])


class BatchReceive:
    """recvmmsg up to a batch per call; a run of consecutive datagrams of one open flow leaves in one
    sendmmsg (a lone one through the executor's send)."""

    def __init__(
        self,
        executor: Executor,
        receiver: BatchReceiver,
        settings: Settings,
        *,
        budget: int = MAX_BATCH,
        raw: "RawSend | None" = None,
    ) -> None:
        self.executor = executor
        self.raw = raw  # the raw send path: every flow's datagrams of a batch leave in one sendmmsg
        self.budget = budget  # datagrams per drain at most (whole recvmmsg batches)
        self.receiver = receiver
        self.sender = BatchSender.create(receiver, settings.prefixes_header)
        # Flow sockets are connected: runs are sent without an address.
        self.connected = settings.connects_flows
        gso = settings.gso
        # Runs of equal-size datagrams as one UDP GSO send (--gso); None when off or unavailable.
        sender = self.sender
        self.segmenting = sender if gso and sender is not None and sender.enable_gso() else None

    def drain(self, route: "Route", now: float) -> None:
        """Receive and handle until the socket would block, or `budget` datagrams."""
        if self.raw is not None:
            self._drain_raw(route, now, self.raw)
        else:
            self._drain_runs(route, now)

    def _drain_runs(self, route: "Route", now: float) -> None:
        """drain() with a socket per flow.

        This is the hot path: a datagram of an open flow costs the machine's one dict lookup; consecutive
        datagrams of one flow are sent together. A run covers consecutive slots only: any other action in
        between (a drop, a new flow) ends it, so a run never stretches over another client's datagram, and
        a flow a new one evicts has no run pending. A datagram of a trusted sender leaves without its PROXY
        header: its iovec starts after it (`skips`, filled only for such datagrams).
        """
        receiver = self.receiver
        executor = self.executor
        receive = executor.machine.receive
        fd = route.listener.sock.fileno()
        name_length = NAME_LENGTH[route.listener.family]
        path = route.path
        u32, data, names, slots = receiver.u32, receiver.view, receiver.name_view, receiver.slots
        pktinfo = route.pktinfo
        if self.sender is not None:
            self.sender.aim(path.destination.family, None if self.connected else path.target)
        handled = 0
        while handled < self.budget:
            try:
                count = receiver.receive(fd)
            except OSError as error:
                executor.log_drop(executor.machine.receive_failed(path, error.errno or 0))
                return
            run: Flow | None = None
            run_header: bytearray | None = None
            run_first = run_length = 0
            skips: dict[int, int] = {}
            local: bytes | None = None
            for index in range(count):
                length, flags, name, offset = slots[index]
                client = bytes(names[name : name + name_length])
                if pktinfo:
                    local = self._local(index, route)
                    action = receive(path, client, u32[length], u32[flags], now, local=local)
                else:
                    action = receive(path, client, u32[length], u32[flags], now)
                if action is READ_HEADER:
                    action, skips[index] = executor.machine.receive_proxied(
                        path, client, data[offset : offset + u32[length]], u32[flags], now, local=local
                    )
                # A run's datagrams share its flow and the PROXY header it had then (`run_header`): a
                # datagram to another of the host's addresses (--send-proxy-protocol) starts a new run.
                if action is run and action.header is run_header:
                    run_length += 1
                    continue
                if action.__class__ is Flow:
                    if run is not None:
                        self._send_run(run, run_first, run_length, skips, run_header)
                    run, run_first, run_length = action, index, 1
                    run_header = run.header
                    continue
                if run is not None:
                    self._send_run(run, run_first, run_length, skips, run_header)
                    run = None
                executor.execute(route, action, data[offset + skips.get(index, 0) : offset + u32[length]])
            if run is not None:
                self._send_run(run, run_first, run_length, skips, run_header)
            handled += count
            if count < receiver.batch:
                return

    def _drain_raw(self, route: "Route", now: float, raw: "RawSend") -> None:
        """drain() on the raw send path: every datagram of an open (or newly opened) flow joins the batch,
        whoever its client, and the whole batch leaves in one sendmmsg per family after the machine has
        seen it all; a datagram that fails costs only itself.

        This is the hot path: a datagram of an open flow costs the machine's lookup and one call that
        queues its address and size (the payload stays where it was received: no slice, no copy).
        """
        receiver = self.receiver
        executor = self.executor
        machine = executor.machine
        receive = machine.receive
        fd = route.listener.sock.fileno()
        name_length = NAME_LENGTH[route.listener.family]
        path = route.path
        u32, data, names, slots = receiver.u32, receiver.view, receiver.name_view, receiver.slots
        base = receiver.data_address
        pktinfo = route.pktinfo
        handled = 0
        local: bytes | None = None
        while handled < self.budget:
            try:
                count = receiver.receive(fd)
            except OSError as error:
                executor.log_drop(machine.receive_failed(path, error.errno or 0))
                return
            for index in range(count):
                length, flags, name, offset = slots[index]
                client = bytes(names[name : name + name_length])
                size = u32[length]
                if pktinfo:
                    local = self._local(index, route)
                    action = receive(path, client, size, u32[flags], now, local=local)
                else:
                    action = receive(path, client, size, u32[flags], now)
                if action.__class__ is Flow:
                    sending: RawFlow = action.raw  # type: ignore[assignment]
                    sending.queue(action, sending, base + offset, size)
                    continue
                if action is READ_HEADER:
                    action, skip = machine.receive_proxied(
                        path, client, data[offset : offset + size], u32[flags], now, local=local
                    )
                    offset += skip
                    size -= skip
                    if action.__class__ is Flow:
                        raw.queue(action, base + offset, size)
                        continue
                if action.__class__ is OpenFlow:
                    flow = action.flow
                    if executor.open(flow):
                        raw.queue(flow, base + offset, size)
                else:
                    executor.execute(route, action, data[offset : offset + size])
            flush_raw(raw, executor)
            handled += count
            if count < receiver.batch:
                return

    def _local(self, index: int, route: "Route") -> bytes | None:
        """The local address datagram `index` was sent to, from its control messages (see
        pktinfo_in_control)."""
        receiver = self.receiver
        at = receiver.controls[index]
        u32 = receiver.u32
        local = pktinfo_in_control(
            receiver.control_view[at : at + u32[receiver.control_lengths[index]]],
            route.listener.family,
            u32[receiver.slots[index].flags],
        )
        if local is UNKNOWN_LOCAL:
            CONTROL_TRUNCATED(route.listener.label)
        return local

    def _send_run(
        self, flow: Flow, first: int, length: int, skips: dict[int, int], header: bytearray | None = None
    ) -> None:
        """Send received datagrams first..first+length-1 (all of `flow`, after `header`: the flow's PROXY
        header when they were received, which a later datagram to another address may have changed): with
        GSO (and no PROXY header to skip), each stretch of equal sizes as one send; whatever GSO does not
        take or refuses, as _send_each does."""
        if length == 1:  # a lone datagram (every one, with many flows interleaved): straight to the send
            receiver = self.receiver
            slot = receiver.slots[first]
            view = receiver.view[slot.data + skips.get(first, 0) : slot.data + receiver.u32[slot.length]]
            self.executor.send(flow, view, header)
            return
        sender = self.segmenting
        if sender is None or sender.gso is None or flow.socket is None or skips:
            self._send_each(flow, first, length, skips, header)
            return
        u32, slots = self.receiver.u32, self.receiver.slots
        largest = sender.gso.largest
        fd = flow.socket.fileno()
        lengths = [u32[slots[index].length] for index in range(first, first + length)]
        most = MAX_PAYLOAD[flow.path.destination.family]
        for start, count, segment in plan_runs(lengths, max_payload=most):
            if count == 1 or segment > largest or sender.send_segmented(fd, first + start, count, segment):
                self._send_each(flow, first + start, count, skips)

    def _send_each(
        self, flow: Flow, first: int, length: int, skips: dict[int, int], header: bytearray | None = None
    ) -> None:
        """Send received datagrams first..first+length-1 (all of `flow`, after `header`, by default the
        flow's), each without the first `skips[i]` bytes (its PROXY header) when given; a failed one costs
        only itself, and one failed by an earlier datagram's ICMP error is sent again."""
        receiver = self.receiver
        sender = self.sender
        executor = self.executor
        slots, u32, data = receiver.slots, receiver.u32, receiver.view
        header = header or flow.header
        retried = -1
        while length:
            if length == 1 or sender is None or flow.socket is None:
                slot = slots[first]
                payload = data[slot.data + skips.get(first, 0) : slot.data + u32[slot.length]]
                executor.send(flow, payload, header)
                first, length = first + 1, length - 1
                continue
            sent, error_number = sender.send_run(flow.socket.fileno(), first, length, skips, header)
            first, length = first + sent, length - sent
            if error_number:
                if retried != first and executor.failed_by_pending_error(flow, error_number):
                    retried = first
                    continue
                executor.log_drop(executor.machine.send_failed(flow.path, flow.raw_peer, error_number))
                first, length = first + 1, length - 1


def create(  # noqa: PLR0913 - settings plus the engine-built parts
    settings: Settings,
    executor: Executor,
    batch: int,
    buffer_size: int,
    *,
    pktinfo: bool = False,
    raw: "RawSend | None" = None,
) -> Strategy:
    """The strategy --receive names ('batch' or 'single'); 'batch' falls back to 'single' where libc lacks
    recvmmsg. `pktinfo`: some listener needs each datagram's local address; `raw` (batch only): the raw
    send path, one sendmmsg per batch. The rest is the settings': connected flow sockets, PROXY headers
    before every datagram, UDP GSO runs (batch only), the datagrams one drain handles at most."""
    name, budget = settings.receive, settings.batch_budget
    if name == "batch":
        # With room for pktinfo messages when some listener needs them; None where libc has no recvmmsg.
        receiver = BatchReceiver.create(batch, buffer_size, CONTROL_SPACE if pktinfo else 0)
        if receiver is not None:
            return BatchReceive(executor, receiver, settings, budget=budget, raw=raw)
    elif name != "single":
        raise ValueError(f"receive strategy {name!r}: expected 'batch' or 'single'")
    return SingleReceive(executor, buffer_size, budget)
