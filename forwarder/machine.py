"""The forwarding state machine, sans I/O (in the manner of aioquic's connection): datagram metadata in,
actions out, events back. It owns the flow table, the counters and the policy (which source to present,
which flows to keep, what a failure is counted as); it never touches a socket. The engine receives,
executes the actions and reports what happened, so everything here is tested without sockets or privileges.

    engine                                 machine
    receive(path, client, size, flags) ->  an action: the open Flow (send on it), OpenFlow, SendOnce, Drop
    flow_opened / open_failed /        ->  CloseFlows (evicted to make room) or a Drop (the failure counted)
    send_failed / send_once_failed
    reply_received(flow, source, ...)  ->  the Flow whose client gets the reply (relay it), or a Drop
    reply_send_failed / icmp_error     ->  a Drop / the name the error is counted as
    expire(now)                        ->  CloseFlows (idle in both directions, or source became local)

A datagram is counted as forwarded when the machine hands out the action that sends it; a failure event
(always reported in the same drain, before the next STATUS=) takes it back and counts the drop instead, so
the hot path costs one counter increment and no event.
"""

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from forwarder.core import (
    Counters,
    DropReason,
    Entry,
    FlowTable,
    SockAddr,
    decode_sockaddr,
    drop_key,
    presentable_source,
)
from forwarder.destination import Destination
from forwarder.icmp import QueuedError

MSG_TRUNC = socket.MSG_TRUNC
DEFAULT_MAX_FLOWS = 4096
DEFAULT_IDLE_TIMEOUT = 60.0

# The one flow key of every receive strategy: (destination address, client's raw struct sockaddr).
FlowKey = tuple[tuple[str, int], bytes]


class LocalProbe(Protocol):
    """Answers "is this address one of this host's?"; `forget` drops cached answers (addresses change)."""

    def __call__(self, address: str) -> bool: ...

    def forget(self) -> None: ...


@dataclass(frozen=True, slots=True, eq=False)
class Path:
    """Datagrams arriving on the listening socket `name` go to `destination`."""

    name: str
    destination: Destination
    target: tuple[str, int] = field(init=False)  # destination.sockaddr, computed once: it keys every flow

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", self.destination.sockaddr)


class Flow(Entry):
    """One client's flow to one destination, with the socket the engine opened for it (`handle`).

    Returned by `receive`, the flow is also the action "send this datagram on the flow's open socket"; by
    `reply_received`, "relay this reply to the flow's client": the hot paths allocate nothing.
    """

    __slots__ = ("address", "client", "handle", "key", "local", "path", "source")

    def __init__(
        self,
        key: FlowKey,
        path: Path,
        source: tuple[str, int],
        address: SockAddr | None = None,
        local: bytes | None = None,
    ) -> None:
        super().__init__()
        self.key = key
        self.path = path
        self.client = key[1]  # raw sockaddr, as received
        self.address = address if address is not None else decode_sockaddr(key[1])  # the same, decoded
        self.source = source  # the (address, port) presented to the backend
        self.local = local  # the raw address the client sent to (IP_PKTINFO), on a wildcard listener
        self.handle: socket.socket | None = None

    def __repr__(self) -> str:
        return f"Flow({self.source[0]}:{self.source[1]} -> {self.path.destination})"


@dataclass(frozen=True, slots=True)
class OpenFlow:
    """Open a socket for `flow` (bound to its source), send the datagram on it, report flow_opened (or
    open_failed, then send_failed if the send fails)."""

    flow: Flow


@dataclass(frozen=True, slots=True)
class SendOnce:
    """Send the datagram from a one-shot socket bound to `source` (local to this host: never kept)."""

    path: Path
    client: bytes
    source: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Drop:
    """Nothing to send: the datagram (or the backend's reply to `client`) was dropped, and counted, as
    `key`; the engine logs it, rate-limited."""

    key: str
    path: Path
    client: bytes | None  # raw sockaddr; None when unknown (a failed receive)
    reply: bool = False


@dataclass(frozen=True, slots=True)
class CloseFlows:
    """Close these flows' sockets: they left the table (evicted, idle, source became local, shutdown)."""

    flows: tuple[Flow, ...]


Action = Flow | OpenFlow | SendOnce | Drop


def errno_name(error_number: int) -> str:
    """ECONNREFUSED for 111: the detail of a drop caused by an errno."""
    return errno.errorcode.get(error_number, str(error_number))


class ForwardingMachine:
    """Decides, for every datagram, how it leaves, keeps the flows and counts everything."""

    def __init__(
        self,
        max_flows: int = DEFAULT_MAX_FLOWS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        is_local: LocalProbe | None = None,
        is_broadcast: LocalProbe | None = None,
        relay: bool = False,
    ) -> None:
        self.flows: FlowTable[FlowKey, Flow] = FlowTable(max_flows, idle_timeout)
        self.relay = relay  # --reply relay: replies arriving on flow sockets go back to the clients
        self.counters = Counters(relay=relay)
        self.is_local: LocalProbe = is_local if is_local is not None else _NothingLocal()
        # Whether an IPv4 address is a directed broadcast of one of the host's subnets.
        self.is_broadcast: LocalProbe = is_broadcast if is_broadcast is not None else _NothingLocal()
        self._lookup: Callable[[FlowKey], Flow | None] = self.flows.lookup

    # --- datagram metadata in, an action out -----------------------------------------------------------

    def receive(
        self, path: Path, client: bytes, size: int, flags: int, now: float, *, local: bytes | None = None
    ) -> Action:
        """The action for a datagram of `size` bytes from `client` (raw sockaddr) that arrived on `path`;
        `local` is the raw address it was sent to, when the engine asks (relay mode, wildcard listener).

        The hot path: an open flow is one dict lookup, returned as its own action."""
        if flags & MSG_TRUNC:
            return self._drop(path, client, drop_key(DropReason.TRUNCATED))
        flow = self._lookup((path.target, client))
        if flow is not None:
            flow.last_used = now
            flow.referenced = True
            self.counters.forwarded += 1
            if local is not None:
                flow.local = local  # replies leave from the address the client used last
            return flow
        return self._first(path, client, now, local)

    def _first(self, path: Path, client: bytes, now: float, local: bytes | None) -> Action:
        """The first datagram of a flow (or of a client that never gets one)."""
        address = decode_sockaddr(client)
        source = presentable_source(address, path.destination.family, self.is_broadcast)
        if isinstance(source, DropReason):
            return self._drop(path, client, source.value)
        self.counters.forwarded += 1
        if self.is_local(source[0]):
            return SendOnce(path, client, source)
        flow = Flow((path.target, client), path, source, address, local)
        flow.last_used = now
        return OpenFlow(flow)

    def receive_failed(self, path: Path, error_number: int) -> Drop:
        """Receiving from `path`'s listening socket failed."""
        return self._drop(path, None, drop_key(DropReason.RECEIVE_ERROR, errno_name(error_number)))

    # --- events back -------------------------------------------------------------------------------------

    def flow_opened(self, flow: Flow, handle: socket.socket) -> CloseFlows | None:
        """The engine opened `handle` for `flow`: keep it (as used when its first datagram arrived); the
        flows evicted to make room must be closed."""
        flow.handle = handle
        evicted = self.flows.add(flow.key, flow, flow.last_used)
        return CloseFlows(tuple(evicted)) if evicted else None

    def open_failed(self, flow: Flow, error_number: int) -> Drop:
        """Opening `flow`'s socket failed: its datagram is a send error, and no flow is kept."""
        return self._failed(flow.path, flow.client, error_number)

    def send_failed(self, path: Path, client: bytes, error_number: int) -> Drop:
        """A datagram of `client` (counted as forwarded) could not be sent."""
        return self._failed(path, client, error_number)

    def send_once_failed(self, action: SendOnce, error_number: int) -> Drop:
        """The one-shot send of a local source failed."""
        return self._failed(action.path, action.client, error_number, local_source=True)

    def _failed(self, path: Path, client: bytes, error_number: int, local_source: bool = False) -> Drop:
        """The one place an errno becomes a drop. A local source whose port a local program holds
        (EADDRINUSE), or which the kernel refuses (EINVAL), is a drop of its own kind."""
        self.counters.forwarded -= 1
        reason = DropReason.SEND_ERROR
        if local_source and error_number in (errno.EADDRINUSE, errno.EINVAL):
            reason = DropReason.LOCAL_SOURCE
        return self._drop(path, client, drop_key(reason, errno_name(error_number)))

    def _drop(self, path: Path, client: bytes | None, key: str) -> Drop:
        self.counters.dropped[key] += 1
        return Drop(key, path, client)

    # --- the backend's replies ------------------------------------------------------------------------------

    def reply_received(
        self, flow: Flow, source: SockAddr, size: int, flags: int, now: float
    ) -> "Flow | Drop":
        """A datagram of `size` bytes from `source` arrived on `flow`'s socket: the flow whose client it is
        relayed to (it counts as use of that flow), or why not.

        Two flows of one client to two destinations share the client's address and port; an unconnected
        socket may receive the other destination's reply, so the reply goes to the flow of its source. A
        reply whose flow is gone (evicted) is never sent anywhere else."""
        if not self.relay:
            return self._reply_drop(flow, DropReason.REPLY_IN_DIRECT_MODE)
        if flags & MSG_TRUNC:
            return self._reply_drop(flow, DropReason.REPLY_TRUNCATED)
        backend = (str(source[0]), int(source[1]))
        if backend != flow.path.target:
            other = self._lookup((backend, flow.client))
            if other is None:
                return self._reply_drop(flow, DropReason.REPLY_UNMATCHED)
            flow = other
        flow.last_used = now
        flow.referenced = True
        self.counters.relayed += 1
        return flow

    def reply_send_failed(self, flow: Flow, error_number: int) -> Drop:
        """Relaying a reply (counted as relayed) to `flow`'s client failed."""
        self.counters.relayed -= 1
        return self._reply_drop(flow, DropReason.REPLY_SEND_ERROR, errno_name(error_number))

    def reply_receive_failed(self, flow: Flow, error_number: int) -> Drop:
        """Receiving from `flow`'s socket failed with an error that is not a queued ICMP error."""
        return self._reply_drop(flow, DropReason.REPLY_RECEIVE_ERROR, errno_name(error_number))

    def replies_unmatched(self, flow: Flow, count: int) -> None:
        """`count` replies were still queued on `flow`'s socket when the flow was closed (evicted)."""
        if count:
            self.counters.reply_dropped[DropReason.REPLY_UNMATCHED.value] += count

    def icmp_error(self, flow: Flow, error: QueuedError) -> str:
        """An ICMP error about `flow`'s datagrams (from its socket's error queue): count it by type; the
        name it was counted as is returned for the log."""
        name = error.name
        self.counters.icmp_errors[name] += 1
        return name

    def _reply_drop(self, flow: Flow, reason: DropReason, detail: str = "") -> Drop:
        key = drop_key(reason, detail)
        self.counters.reply_dropped[key] += 1
        return Drop(key, flow.path, flow.client, reply=True)

    # --- time -----------------------------------------------------------------------------------------------

    def expire(self, now: float) -> CloseFlows:
        """The flows idle for longer than the idle timeout, and those whose source address has become local
        to this host (a local program must be free to bind it), or a broadcast address of it, since they
        were opened: out of the table."""
        stale = self.flows.expire(now)
        self.is_local.forget()
        self.is_broadcast.forget()
        for flow in self.flows.values():
            address = flow.source[0]
            if self.is_local(address) or (":" not in address and self.is_broadcast(address)):
                self.flows.remove(flow.key)
                stale.append(flow)
        return CloseFlows(tuple(stale))

    def close(self) -> CloseFlows:
        """Every flow, at shutdown."""
        return CloseFlows(tuple(self.flows.clear()))


class _NothingLocal:
    """The probe of a machine told nothing: no address is local (or a broadcast address)."""

    def __call__(self, address: str) -> bool:
        return False

    def forget(self) -> None:
        pass
