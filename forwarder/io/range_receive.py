"""Receiving on a port range's socket (TPROXY): each datagram's original destination, which the kernel
tells in a control message (IP_ORIGDSTADDR / IPV6_ORIGDSTADDR), picks its Path by the range's rule
(forwarder.core.ranges); a datagram outside the range is dropped and counted. Every other listener is
drained by the strategy this one wraps, exactly as without ranges: the check is per drain, not per datagram.
"""

from typing import TYPE_CHECKING

from forwarder.core.actions import READ_HEADER, OpenFlow
from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.flows import Flow, Path, bounded_put
from forwarder.core.ranges import PortMap
from forwarder.core.settings import Settings
from forwarder.io.batch import NAME_LENGTH, BatchReceiver
from forwarder.io.control import CONTROL_SPACE, origdst_in_control, origdst_local
from forwarder.io.receive import NAME_CACHE_SIZE, Executor, Strategy, flush_raw

if TYPE_CHECKING:
    from forwarder.io.listeners import Route
    from forwarder.io.rawsend import RawSend


class RangeReceive:
    """Drains range listeners (`route.ports`) with their own receiver, which has room for control
    messages; hands the others to `inner`."""

    def __init__(  # noqa: PLR0913 - the wrapped strategy, the engine, settings, buffer sizes
        self,
        inner: Strategy,
        executor: Executor,
        settings: Settings,
        batch: int,
        buffer_size: int,
        *,
        raw: "RawSend | None" = None,
    ) -> None:
        self.inner = inner
        self.executor = executor
        self.raw = raw
        self.budget = settings.batch_budget
        # In relay mode a flow's replies leave from the address and port its client sent to last: the
        # original destination, kept as the flow's local address.
        self.relays = settings.relays
        self.receiver = (
            BatchReceiver.create(batch, buffer_size, CONTROL_SPACE) if settings.receive == "batch" else None
        )
        self._view = memoryview(bytearray(buffer_size))
        self._names: dict[object, bytes] = {}

    def drain(self, route: "Route", now: float) -> None:
        """Receive and handle until the socket would block, or the budget is spent."""
        ports = route.ports
        if ports is None:
            self.inner.drain(route, now)
        elif self.receiver is None:
            self._drain_single(route, ports, now)
        else:
            self._drain_batch(route, ports, self.receiver, now)

    def _drain_batch(self, route: "Route", ports: PortMap, receiver: BatchReceiver, now: float) -> None:
        """recvmmsg a batch at a time; on the raw send path the batch leaves in one sendmmsg per family."""
        executor = self.executor
        machine = executor.machine
        receive = machine.receive
        raw = self.raw
        relays = self.relays
        fd = route.listener.sock.fileno()
        name_length = NAME_LENGTH[route.listener.family]
        listener = route.path
        u32, data, names, slots = receiver.u32, receiver.view, receiver.name_view, receiver.slots
        controls, control_view, control_lengths = (
            receiver.controls,
            receiver.control_view,
            receiver.control_lengths,
        )
        base = receiver.data_address
        handled = 0
        while handled < self.budget:
            try:
                count = receiver.receive(fd)
            except OSError as error:
                executor.log_drop(machine.receive_failed(listener, error.errno or 0))
                return
            for index in range(count):
                length, flag_at, name, offset = slots[index]
                client = bytes(names[name : name + name_length])
                size, flags = u32[length], u32[flag_at]
                at = controls[index]
                original = origdst_in_control(control_view[at : at + u32[control_lengths[index]]], flags)
                path = ports.path_for(original) if original else None
                # Outside the range, or (when the range holds a destination's port) a loop: not forwarded.
                if (path is None or ports.loops) and (
                    path := self._refuse(path, ports, listener, client, original)
                ) is None:
                    continue
                local = original if relays else None
                action = receive(path, client, size, flags, now, local=local)
                if action is READ_HEADER:
                    action, skip = machine.receive_proxied(
                        path, client, data[offset : offset + size], flags, now, local=local
                    )
                    offset += skip
                    size -= skip
                kind = action.__class__
                if raw is None:
                    if kind is Flow:
                        executor.send(action, data[offset : offset + size])  # type: ignore[arg-type]
                    else:
                        executor.execute(route, action, data[offset : offset + size])
                elif kind is Flow:
                    raw.queue(action, base + offset, size)  # type: ignore[arg-type]
                elif kind is OpenFlow:
                    if executor.open(action.flow):  # type: ignore[union-attr]
                        raw.queue(action.flow, base + offset, size)  # type: ignore[union-attr]
                else:
                    executor.execute(route, action, data[offset : offset + size])
            if raw is not None:
                flush_raw(raw, executor)
            handled += count
            if count < receiver.batch:
                return

    def _refuse(
        self, path: Path | None, ports: PortMap, listener: Path, client: bytes, original: bytes | None
    ) -> Path | None:
        """`path`, unless the datagram must not be forwarded (then None, its drop counted and logged): sent
        outside the range (`path` None), or back to one of our destinations on this host (a loop)."""
        machine = self.executor.machine
        drop = (
            machine.outside_range(listener, client, original)
            if path is None or not original
            else machine.range_loop(ports, listener, client, original)
        )
        if drop is None:
            return path
        self.executor.log_drop(drop)
        return None

    def _drain_single(self, route: "Route", ports: PortMap, now: float) -> None:
        """One recvmsg per datagram (--receive single, or no recvmmsg in libc)."""
        executor = self.executor
        machine = executor.machine
        receive = machine.receive
        sock = route.listener.sock
        family = sock.family
        listener = route.path
        view = self._view
        buffers = [view]
        names = self._names
        relays = self.relays
        for _ in range(self.budget):
            try:
                size, ancillary, flags, sender = sock.recvmsg_into(buffers, CONTROL_SPACE)
            except BlockingIOError:
                return
            except OSError as error:
                executor.log_drop(machine.receive_failed(listener, error.errno or 0))
                return
            client = names.get(sender)
            if client is None:
                client = sockaddr_bytes(family, sender)
                bounded_put(names, sender, client, NAME_CACHE_SIZE)
            original = origdst_local(ancillary, flags)
            path = ports.path_for(original) if original else None
            # Outside the range, or (when the range holds a destination's port) a loop: not forwarded.
            if (path is None or ports.loops) and (
                path := self._refuse(path, ports, listener, client, original)
            ) is None:
                continue
            local = original if relays else None
            action = receive(path, client, size, flags, now, local=local)
            skip = 0
            if action is READ_HEADER:
                action, skip = machine.receive_proxied(path, client, view[:size], flags, now, local=local)
            if action.__class__ is Flow:
                executor.send(action, view[skip:size])
            else:
                executor.execute(route, action, view[skip:size])
