"""The forwarding state machine, sans I/O (in the manner of aioquic's connection): datagram metadata in,
actions out, events back. It owns the flow table, the counters and the policy (which source to present,
which flows to keep, what a failure is counted as); it never touches a socket. The engine receives,
executes the actions and reports what happened, so everything here is tested without sockets or privileges.

    engine                                 machine
    receive(path, client, size, flags) ->  an action: the open Flow (send on it), OpenFlow, SendOnce, Drop,
                                           or READ_HEADER (a trusted sender: the machine needs the bytes)
    receive_proxied(path, client, data) -> (one of those actions, bytes of PROXY header to skip)
    flow_opened / open_failed /        ->  CloseFlows (evicted to make room) or a Drop (the failure counted)
    send_failed / send_once_failed
    reply_received(flow, source, ...)  ->  the Flow whose client gets the reply (relay it), or a Drop
    reply_send_failed / icmp_error     ->  a Drop / the name the error is counted as
    expire(now)                        ->  CloseFlows (idle in both directions, or source became local)

A datagram is counted as forwarded when the machine hands out the action that sends it; a failure event
(always reported in the same drain, before the next STATUS=) takes it back and counts the drop instead, so
the hot path costs one counter increment and no event.

One flow per 4-tuple: a flow is keyed by (backend, the client's address and port as presented), whatever
listener or PROXY header brought the client, so no two flow sockets ever share a 4-tuple (the kernel would
hand every reply to the newer one). A sender's raw sockaddr reaches its flow by one dict lookup (`_senders`:
a v4-mapped client of a `[::]` listener and the same client on an IPv4 listener are two senders of one
flow). The flow's reply path (listening socket, local address, peer) follows the latest datagram: replies
leave from the address the client used last, to the client or the load balancer that sent it.

PROXY protocol (--proxy-protocol-from): a sender in a trusted network never has a sender entry of its own,
so its datagrams miss and cost one cached "trusted?" answer before their header is read; an untrusted
sender's hit costs nothing more than before. A header's client gets the flow of its address and port, so
one load balancer's clients get their own flows under the same --max-flows and idle rules.
"""

import errno
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from forwarder.core import (
    Counters,
    DropReason,
    Entry,
    FlowTable,
    SockAddr,
    bounded_put,
    decode_sockaddr,
    drop_key,
    plain_address,
    presentable_source,
    sockaddr_bytes,
)
from forwarder.destination import Destination
from forwarder.endpoint import endpoint_text
from forwarder.icmp import QueuedError
from forwarder.proxy_protocol import Command, HeaderCache, HeaderProblem, build, parse

if TYPE_CHECKING:
    from forwarder.proxy_protocol import TrustedSources

# A plain int: `flags & socket.MSG_TRUNC` (an IntFlag) goes through enum.Flag and cost about 1.4 us per
# datagram and per reply, 40 times the check itself.
MSG_TRUNC = int(socket.MSG_TRUNC)
DEFAULT_MAX_FLOWS = 4096
DEFAULT_IDLE_TIMEOUT = 60.0

# A flow key: (destination address, the client's canonical struct sockaddr: see canonical_sockaddr); a sender
# key: (destination address, the sender's raw struct sockaddr, as received).
FlowKey = tuple[tuple[str, int], bytes]
_AF_INET6 = socket.AF_INET6.to_bytes(2, "little")
_AF_INET = socket.AF_INET.to_bytes(2, "little")
_V4_MAPPED = bytes(10) + b"\xff\xff"
# The PROXY headers remembered (--proxy-protocol-from), in bytes: thousands of a load balancer's ordinary
# headers, or 64 of the largest a header can be.
HEADER_CACHE_BYTES = 4 << 20
# The headers a --send-proxy-protocol flow keeps for the listeners and host addresses its clients used.
FLOW_HEADERS = 16

# What a PROXY header received was found to mean: the path it came on, its client's flow key, the source
# presented (or why not), and with --send-proxy-protocol the header to send on (or why none can be).
Judged = tuple["Path", "FlowKey", "tuple[str, int] | DropReason", "bytearray | DropReason | None"]


class LocalProbe(Protocol):
    """Answers "is this address one of this host's?"; `forget` drops cached answers (addresses change)."""

    def __call__(self, address: str) -> bool: ...

    def forget(self) -> None: ...


@dataclass(frozen=True, slots=True, eq=False)
class Path:
    """Datagrams arriving on the listening socket `name` go to `destination`; `listen` is that socket's
    address (for the PROXY header of --send-proxy-protocol when no IP_PKTINFO tells a better one)."""

    name: str
    destination: Destination
    listen: tuple[str, int] | None = None
    target: tuple[str, int] = field(init=False)  # destination.sockaddr, computed once: it keys every flow

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", self.destination.sockaddr)


class Flow(Entry):
    """One client's flow to one destination, with the socket the engine opened for it (`handle`).

    Returned by `receive`, the flow is also the action "send this datagram on the flow's open socket"; by
    `reply_received`, "relay this reply to the flow's client": the hot paths allocate nothing.
    """

    __slots__ = (
        "address",
        "client",
        "handle",
        "header",
        "header_local",
        "header_path",
        "headers",
        "key",
        "local",
        "path",
        "raw",
        "senders",
        "source",
    )

    def __init__(
        self,
        key: FlowKey,
        path: Path,
        source: tuple[str, int],
        address: SockAddr | None = None,
        local: bytes | None = None,
        *,
        client: bytes | None = None,
    ) -> None:
        super().__init__()
        self.key = key
        self.path = path
        # The sender's raw sockaddr, as received (the client, or the load balancer that named it), decoded.
        self.client = key[1] if client is None else client
        self.address = address if address is not None else decode_sockaddr(self.client)
        self.source = source  # the (address, port) presented to the backend
        self.local = local  # the raw address the client sent to (IP_PKTINFO), on a wildcard listener
        self.handle: socket.socket | None = None
        # --send-proxy-protocol: the PROXY header the flow's datagrams get, and what it names: the listener
        # (`header_path`; None for a header decided by a received one) and the address the client sent to
        # (`header_local`); those built for other listeners and addresses are kept in `headers`.
        self.header: bytearray | None = None
        self.header_path: Path | None = None
        self.header_local: bytes | None = None
        self.headers: dict[tuple[Path, bytes | None], bytearray] | None = None
        # The sender keys that lead to this flow (forgotten with it).
        self.senders: list[FlowKey] = []
        # On the raw send path: what its datagrams need there (forwarder.rawsend.RawFlow), built once.
        self.raw: object | None = None

    def __repr__(self) -> str:
        return f"Flow({endpoint_text(self.source)} -> {self.path.destination})"


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


class ReadHeader:
    """The action "this sender is trusted: give me its datagram" (receive_proxied); one instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "READ_HEADER"


READ_HEADER = ReadHeader()

Action = Flow | OpenFlow | SendOnce | Drop | ReadHeader
ProxiedAction = Flow | OpenFlow | SendOnce | Drop


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
        *,
        trusted: "TrustedSources | None" = None,
        relay: bool = False,
        send_header: bool = False,
        source_toward: Callable[[str], str | None] | None = None,
        backends: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.flows: FlowTable[FlowKey, Flow] = FlowTable(max_flows, idle_timeout)
        # --reply relay (implied by --send-proxy-protocol): replies arriving on flow sockets go back to
        # the clients.
        self.relay = relay or send_header
        self.counters = Counters(relay=self.relay)
        self.is_local: LocalProbe = is_local if is_local is not None else _NothingLocal()
        # Whether an IPv4 address is a directed broadcast of one of the host's subnets.
        self.is_broadcast: LocalProbe = is_broadcast if is_broadcast is not None else _NothingLocal()
        # Sender key -> its flow: the hot path's one lookup (kept in step with the flow table).
        self._senders: dict[FlowKey, Flow] = {}
        self._lookup: Callable[[FlowKey], Flow | None] = self._senders.get
        # Whether a sender's PROXY headers are believed (--proxy-protocol-from); None: nobody's are.
        self.trusted = trusted
        # --send-proxy-protocol: flows send from the host's own address, each datagram after a PROXY header
        # naming the client, so a local client needs no one-shot socket, and replies are relayed.
        self.send_header = send_header
        # The host's address toward a client: the header's destination when a wildcard listener's datagram
        # came without IP_PKTINFO (it was queued before the option was set).
        self.source_toward = source_toward
        # A PROXY header seen before (its exact bytes) -> what it was judged to mean, or the problem that
        # made it unbelievable: a load balancer repeats one header for every datagram of a client, and a
        # header refused once (a wrong CRC32C over 64 KiB, say) costs no second look.
        self._headers: HeaderCache[Judged | HeaderProblem] = HeaderCache(HEADER_CACHE_BYTES)
        # Every destination's (address, port): a client claiming one of them (spoofed, or the backend
        # itself) is never forwarded, since its flow's replies would go to the backend, whose answers come
        # back to a listener as that client's next datagram: a loop one datagram starts and nothing ends.
        self.backends = frozenset((str(plain_address(host)), port) for host, port in backends)

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
            if flow.path is not path or flow.client != client:
                self._redirect(flow, path, client)
            if local is not None:
                flow.local = local  # replies leave from the address the client used last
            if (
                flow.header is not None
                and (flow.header_path is not path or flow.header_local != flow.local)
                and not self._readdress(flow)
            ):
                return self._drop(path, client, DropReason.FAMILY_MISMATCH.value)
            flow.last_used = now
            flow.referenced = True
            self.counters.forwarded += 1
            return flow
        return self._first(path, client, now, local)

    def _readdress(self, flow: Flow) -> bool:
        """--send-proxy-protocol: `flow`'s datagram came on another listener or to another of the host's
        addresses than its header names (or its header was a received one's): the header names the
        flow's listener and address now (built once per flow, listener and address). False when no
        header can."""
        key = (flow.path, flow.local)
        headers = flow.headers
        if headers is None:  # the first change: the header built with the flow is kept too
            headers = flow.headers = {}
            if flow.header is not None and flow.header_path is not None:
                headers[flow.header_path, flow.header_local] = flow.header
        header = headers.get(key)
        if header is None:
            header = _proxy_header(flow.source, flow.local, flow.path, self.source_toward)
            if header is None:
                return False
            bounded_put(headers, key, header, FLOW_HEADERS)
        flow.header, flow.header_path, flow.header_local = header, flow.path, flow.local
        return True

    def _first(self, path: Path, client: bytes, now: float, local: bytes | None) -> Action:
        """The first datagram of a sender (or of a client that never gets a flow), or of a trusted one. A
        flow of the same 4-tuple (another listener's, or a PROXY header's client) becomes this sender's."""
        if self.trusted is not None and self.trusted(client):
            return READ_HEADER
        sender = (path.target, client)
        key = (path.target, canonical_sockaddr(client))
        flow = self.flows.lookup(key)
        if flow is not None:
            flow.senders.append(sender)
            self._senders[sender] = flow
            return self.receive(path, client, 0, 0, now, local=local)
        address = decode_sockaddr(client)
        source = self._presentable(address, path.destination.family)
        action = self._open(path, client, key, source, now, address, local)
        if action.__class__ is OpenFlow:
            action.flow.senders.append(sender)
        return action

    @staticmethod
    def _redirect(flow: Flow, path: Path, client: bytes) -> None:
        """The flow's replies now go to `client` (its latest sender) through `path`'s listening socket; the
        local address it sent to is set after this (or unknown: never one seen on another socket)."""
        flow.path = path
        flow.client = client
        flow.address = decode_sockaddr(client)
        flow.local = None

    def _open(  # noqa: PLR0917
        self,
        path: Path,
        client: bytes,
        key: FlowKey,
        source: tuple[str, int] | DropReason,
        now: float,
        address: SockAddr | None,
        local: bytes | None,
        outgoing: bytearray | DropReason | None = None,
    ) -> ProxiedAction:
        """Open a flow presenting `source` under `key` (a one-shot send for a local one), or drop. With
        --send-proxy-protocol its header is `outgoing` when a received header decided it, else the one
        naming the listener and the address the client sent to."""
        if isinstance(source, DropReason):
            return self._drop(path, client, source.value)
        if source in self.backends or source == path.target:
            return self._drop(path, client, DropReason.BACKEND_SOURCE.value)
        if self.send_header:
            header = _proxy_header(source, local, path, self.source_toward) if outgoing is None else outgoing
            if isinstance(header, DropReason) or header is None:
                return self._drop(path, client, DropReason.FAMILY_MISMATCH.value)
            self.counters.forwarded += 1
            flow = Flow(key, path, source, address, local, client=client)
            flow.header = header
            if outgoing is None:
                flow.header_path, flow.header_local = path, local
            flow.last_used = now
            return OpenFlow(flow)
        self.counters.forwarded += 1
        if self.is_local(source[0]):
            return SendOnce(path, client, source)
        flow = Flow(key, path, source, address, local, client=client)
        flow.last_used = now
        return OpenFlow(flow)

    def _presentable(self, client: SockAddr, family: socket.AddressFamily) -> tuple[str, int] | DropReason:
        """presentable_source; with --send-proxy-protocol a client is named in a header, never bound: the
        backend's family does not matter (the header's two ends must share one, see _proxy_header), and a
        loopback or link-local client can be forwarded too (its replies leave from the listening socket)."""
        if self.send_header:
            family = socket.AF_INET6 if plain_address(str(client[0])).version == 6 else socket.AF_INET
        source = presentable_source(client, family, self.is_broadcast)
        if self.send_header and source in _NAMEABLE:
            return (str(plain_address(str(client[0]))), int(client[1]))
        return source

    def receive_proxied(
        self,
        path: Path,
        client: bytes,
        data: memoryview,
        flags: int,
        now: float,
        *,
        local: bytes | None = None,
    ) -> tuple[ProxiedAction, int]:
        """The action for a datagram from a trusted `client` (after READ_HEADER), and how many bytes of
        PROXY header precede its payload. The header's client is presented (every rule of a client
        applies to it); LOCAL presents the sender itself; a header that is not believed is a drop named
        by its problem. Replies of the flow go back to the sender (`client`), from `local`."""
        if flags & MSG_TRUNC:
            return self._drop(path, client, drop_key(DropReason.TRUNCATED)), 0
        header = bytes(data[: 16 + (data[14] << 8 | data[15])]) if len(data) >= 16 else b""
        known = self._headers.get(header)
        if isinstance(known, HeaderProblem):
            return self._drop(path, client, known.value), 0
        if known is not None and known[0] is path:
            return self._hit_or_open(path, client, *known[1:], now, local), len(header)
        parsed = parse(data)
        if isinstance(parsed, HeaderProblem):
            if parsed not in _CHEAP_PROBLEMS:  # the whole header was read: remember it
                self._headers.put(header, parsed)
            return self._drop(path, client, parsed.value), 0
        family = path.destination.family
        if parsed.command is Command.LOCAL:  # no client behind: the sender itself, in a flow of its own
            source = self._presentable(decode_sockaddr(client), family)
            key = (path.target, canonical_sockaddr(client))
            return self._hit_or_open(path, client, key, source, None, now, local), parsed.length
        assert parsed.source is not None
        source = self._presentable(parsed.source, family)
        named = parsed.source if isinstance(source, DropReason) else source
        key = (path.target, sockaddr_bytes(_family_of(named[0]), named))
        outgoing = None
        if self.send_header and not isinstance(source, DropReason):
            assert parsed.destination is not None
            outgoing = _chained_header(source, parsed.destination)
        self._headers.put(header, (path, key, source, outgoing))
        return self._hit_or_open(path, client, key, source, outgoing, now, local), parsed.length

    def _hit_or_open(  # noqa: PLR0917
        self,
        path: Path,
        client: bytes,
        key: FlowKey,
        source: tuple[str, int] | DropReason,
        outgoing: bytearray | DropReason | None,
        now: float,
        local: bytes | None,
    ) -> ProxiedAction:
        """The flow of a header's client, marked as used; or a new one (or a drop) as for any client.
        With --send-proxy-protocol the flow's header is `outgoing` (the received header's client and
        destination), or for a LOCAL one (None) the header naming the address the sender sent to."""
        flow = self.flows.lookup(key)
        if flow is None:
            return self._open(path, client, key, source, now, None, local, outgoing)
        if isinstance(outgoing, DropReason) and flow.header is not None:
            return self._drop(path, client, outgoing.value)
        if flow.path is not path or flow.client != client:  # replies go to the latest sender
            self._redirect(flow, path, client)
        if local is not None:
            flow.local = local
        if flow.header is not None:
            if isinstance(outgoing, bytearray):
                flow.header, flow.header_path = outgoing, None
            elif (flow.header_path is not path or flow.header_local != flow.local) and not self._readdress(
                flow
            ):
                return self._drop(path, client, DropReason.FAMILY_MISMATCH.value)
        flow.last_used = now
        flow.referenced = True
        self.counters.forwarded += 1
        return flow

    def receive_failed(self, path: Path, error_number: int) -> Drop:
        """Receiving from `path`'s listening socket failed."""
        return self._drop(path, None, drop_key(DropReason.RECEIVE_ERROR, errno_name(error_number)))

    # --- events back -------------------------------------------------------------------------------------

    def flow_opened(self, flow: Flow, handle: socket.socket | None) -> CloseFlows | None:
        """The engine opened `handle` for `flow` (None: the flow needs no socket, on the raw send path):
        keep it (as used when its first datagram arrived); the flows evicted to make room must be closed."""
        flow.handle = handle
        evicted = self.flows.add(flow.key, flow, flow.last_used)
        for sender in flow.senders:
            self._senders[sender] = flow
        return self._gone(evicted) if evicted else None

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
            other = self.flows.lookup((backend, flow.key[1]))
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

    def icmp_error(self, flow: Flow | None, error: QueuedError) -> str:
        """An ICMP error about `flow`'s datagrams (from its socket's error queue; None: from the raw send
        socket's, which names no flow): count it by type; the name it was counted as is returned for the
        log."""
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
        self._headers.clear()  # their sources were judged with the answers just forgotten
        if self.send_header:  # no flow socket is bound to its client's address
            return self._gone(stale)
        for flow in self.flows.values():
            address = flow.source[0]
            if self.is_local(address) or (":" not in address and self.is_broadcast(address)):
                self.flows.remove(flow.key)
                stale.append(flow)
        return self._gone(stale)

    def close(self) -> CloseFlows:
        """Every flow, at shutdown."""
        return self._gone(self.flows.clear())

    def _gone(self, flows: list[Flow]) -> CloseFlows:
        """Flows that left the table: their senders miss again; the engine closes their sockets."""
        senders = self._senders
        for flow in flows:
            for sender in flow.senders:
                senders.pop(sender, None)
        return CloseFlows(tuple(flows))


# Sources that cannot be bound (so the transparent modes drop them) but can be named in a header.
_NAMEABLE = (DropReason.LOOPBACK_SOURCE, DropReason.LINK_LOCAL_SOURCE)
# Header problems found before the whole header is known: not worth a cache entry (nor is the key whole).
_CHEAP_PROBLEMS = (HeaderProblem.MISSING, HeaderProblem.TRUNCATED)


def _chained_header(source: tuple[str, int], destination: tuple[str, int]) -> bytearray | DropReason:
    """--proxy-protocol-from with --send-proxy-protocol: the header sent on names the client presented
    and the destination the received header named (what the client asked the load balancer for, not
    this host's address); family-mismatch when one header cannot name both."""
    address = str(plain_address(destination[0]))
    if _family_of(address) != _family_of(source[0]):
        return DropReason.FAMILY_MISMATCH
    return bytearray(build(source, (address, destination[1])))


def _proxy_header(
    source: tuple[str, int],
    local: bytes | None,
    path: Path,
    source_toward: Callable[[str], str | None] | None,
) -> bytearray | None:
    """The PROXY header of a flow presenting `source`: its destination is the address the client sent
    to (`local`, from IP_PKTINFO, a v4-mapped one as IPv4), else the listening socket's address (for a
    wildcard one, the host's address toward the client); both with the listening socket's port. None when
    the two cannot share one header."""
    if path.listen is None:
        return None
    host, port = path.listen
    # A datagram queued before IP_PKTINFO was set (the one that activated the service) has pktinfo too,
    # but an unspecified address in it.
    if local is not None and any(local):
        host = socket.inet_ntop(socket.AF_INET6 if len(local) == 16 else socket.AF_INET, local)
    if source_toward is not None and plain_address(host).is_unspecified:
        host = source_toward(source[0]) or host
    destination = str(plain_address(host))
    if _family_of(destination) != _family_of(source[0]):
        return None
    return bytearray(build(source, (destination, port)))


def canonical_sockaddr(raw: bytes) -> bytes:
    """The struct sockaddr naming the client in `raw` as a flow key: a v4-mapped IPv6 one (a `[::]`
    listener's IPv4 client) as the sockaddr_in an IPv4 listener receives, an IPv6 one without flow info;
    the scope id stays (it tells link-local clients apart)."""
    if raw[0:2] == _AF_INET6:
        if raw[8:20] == _V4_MAPPED:
            return _AF_INET + raw[2:4] + raw[20:24] + bytes(8)
        if any(raw[4:8]):
            return raw[0:4] + bytes(4) + raw[8:28]
    return raw


def _family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class _NothingLocal:
    """The probe of a machine told nothing: no address is local (or a broadcast address)."""

    def __call__(self, address: str) -> bool:
        return False

    def forget(self) -> None:
        pass
