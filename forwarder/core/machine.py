"""The forwarding state machine, sans I/O (in the manner of aioquic's connection): datagram metadata in,
actions out (forwarder.core.actions), events back. It owns the flow table and the counters and applies
the source policy (forwarder.core.policy) to every client; it never touches a socket. The engine receives,
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

import socket
from collections.abc import Callable, Iterable

from forwarder.core.actions import READ_HEADER, Action, CloseFlows, Drop, OpenFlow, ProxiedAction, SendOnce
from forwarder.core.addresses import SockAddr, decode_sockaddr, family_of, sockaddr_bytes
from forwarder.core.counters import Counters, DropReason, drop_key, errno_name
from forwarder.core.destination import Destination
from forwarder.core.flows import (
    Flow,
    FlowKey,
    FlowTable,
    Path,
    canonical_sockaddr,
)
from forwarder.core.policy import (
    Judgement,
    LocalProbe,
    NothingLocal,
    SourcePolicy,
    Verdict,
    chained_header,
    proxy_header,
    readdress_header,
)
from forwarder.core.proxy_protocol import (
    CHEAP_PROBLEMS,
    HEADER_CACHE_BYTES,
    ChecksumBudget,
    Command,
    HeaderCache,
    HeaderProblem,
    parse,
)
from forwarder.core.ranges import Backends, PortMap
from forwarder.core.reply_rules import ReplyRules
from forwarder.core.settings import Settings

# A plain int: `flags & socket.MSG_TRUNC` (an IntFlag) goes through enum.Flag and cost about 1.4 us per
# datagram and per reply, 40 times the check itself.
MSG_TRUNC = int(socket.MSG_TRUNC)


# What a PROXY header received was found to mean: the path it came on, its client's flow key, the source
# presented (or why not), and with --send-proxy-protocol the header to send on (or why none can be).
Judged = tuple["Path", "FlowKey", "Judgement", "bytearray | DropReason | None"]


class ForwardingMachine(ReplyRules):
    """Decides, for every datagram, how it leaves, keeps the flows and counts everything."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        is_local: LocalProbe | None = None,
        is_broadcast: LocalProbe | None = None,
        source_toward: Callable[[str], str | None] | None = None,
        backends: Iterable[tuple[str, int]] | Backends = (),
    ) -> None:
        self.settings = settings = Settings() if settings is None else settings
        idle_timeout = settings.flow_idle_timeout
        self.flows: FlowTable[FlowKey, Flow] = FlowTable(settings.max_flows, idle_timeout)
        # Idle flows are swept at half the idle timeout, so none outlives it by more than half.
        self.sweep_interval = max(idle_timeout / 2, 0.01)
        self._next_sweep: float | None = None
        # Replies arriving on flow sockets go back to the clients (an attribute: read per reply).
        self.relay = settings.relays
        self.counters = Counters(relay=self.relay)
        # Which source a client is presented with and how it leaves; `is_broadcast` tells whether an IPv4
        # address is a directed broadcast of one of the host's subnets.
        self.policy = SourcePolicy(
            is_local if is_local is not None else NothingLocal(),
            is_broadcast if is_broadcast is not None else NothingLocal(),
            names_in_header=settings.send_proxy_protocol,
            backends=backends,
        )
        # The (address, port) each raw source of a reply on the tproxy reply socket names (reply_arrived),
        # and a steered reply's key (its raw source and client as the engine reads them) -> its flow.
        self._reply_targets: dict[bytes, tuple[str, int]] = {}
        self._steered: dict[bytes, Flow] = {}
        self._steered_get: Callable[[bytes], Flow | None] = self._steered.get
        # Sender key -> its flow: the hot path's one lookup (kept in step with the flow table).
        self._senders: dict[FlowKey, Flow] = {}
        self._lookup: Callable[[FlowKey], Flow | None] = self._senders.get
        # Whether a sender's PROXY headers are believed (--proxy-protocol-from); None: nobody's are.
        self.trusted = settings.trusted()
        # The host's address toward a client: the header's destination when a wildcard listener's datagram
        # came without IP_PKTINFO (it was queued before the option was set).
        self.source_toward = source_toward
        # A PROXY header seen before (its exact bytes) -> what it was judged to mean, or the problem that
        # made it unbelievable: a load balancer repeats one header for every datagram of a client, and a
        # header refused once (a wrong CRC32C over 64 KiB, say) costs no second look.
        self._headers: HeaderCache[Judged | HeaderProblem] = HeaderCache(HEADER_CACHE_BYTES)
        # The CRC32C work distinct headers may cost per second (a trusted address can be spoofed).
        self._checksum_budget = ChecksumBudget()

    # --- datagram metadata in, an action out -----------------------------------------------------------

    def receive(  # noqa: PLR0913 - the hot path: datagram metadata as plain arguments, no object per datagram
        self, path: Path, client: bytes, size: int, flags: int, now: float, *, local: bytes | None = None
    ) -> Action:
        """The action for a datagram of `size` bytes from `client` (raw sockaddr) that arrived on `path`;
        `local` is the raw address it was sent to, when the engine asks (relay mode, wildcard listener).

        The hot path: an open flow is one dict lookup, returned as its own action."""
        if flags & MSG_TRUNC:
            return self._drop(path, client, drop_key(DropReason.TRUNCATED))
        flow = self._lookup((path.target, client))
        if flow is not None:
            if flow.path is not path or flow.raw_peer != client:
                flow.redirect(path, client)
            if local is not None:
                flow.local_address = local  # replies leave from the address the client used last
            if (
                flow.header is not None
                and (flow.header_path is not path or flow.header_local != flow.local_address)
                and not readdress_header(flow, self.source_toward)
            ):
                return self._drop(path, client, DropReason.FAMILY_MISMATCH.value)
            flow.last_used = now
            flow.referenced = True
            self.counters.forwarded += 1
            return flow
        return self._first(path, client, now, local)

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
        judgement = self.policy.judge(address, path.destination.family, path.target)
        action = self._open(path, client, key, judgement, now, address, local)
        if action.__class__ is OpenFlow:
            action.flow.senders.append(sender)
        return action

    def _open(  # noqa: PLR0913, PLR0917 - hot path: no object per datagram
        self,
        path: Path,
        client: bytes,
        key: FlowKey,
        judgement: Judgement,
        now: float,
        address: SockAddr | None,
        local: bytes | None,
        outgoing: bytearray | DropReason | None = None,
    ) -> ProxiedAction:
        """Open a flow presenting `source` under `key` (a one-shot send for a local one), or drop. With
        --send-proxy-protocol its header is `outgoing` when a received header decided it, else the one
        naming the listener and the address the client sent to."""
        if isinstance(judgement, DropReason):
            return self._drop(path, client, judgement.value)
        verdict, source = judgement
        if verdict is Verdict.HEADER:
            header = proxy_header(source, local, path, self.source_toward) if outgoing is None else outgoing
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
        if verdict is Verdict.ONCE:
            return SendOnce(path, client, source)
        flow = Flow(key, path, source, address, local, client=client)
        flow.last_used = now
        return OpenFlow(flow)

    def receive_proxied(  # noqa: PLR0913 - hot path: no object per datagram
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
        parsed = parse(data, self._checksum_budget, now)
        if isinstance(parsed, HeaderProblem):
            if parsed not in CHEAP_PROBLEMS:  # the whole header was read: remember it
                self._headers.put(header, parsed)
            return self._drop(path, client, parsed.value), 0
        family = path.destination.family
        if parsed.command is Command.LOCAL:  # no client behind: the sender itself, in a flow of its own
            judgement = self.policy.judge(decode_sockaddr(client), family, path.target)
            key = (path.target, canonical_sockaddr(client))
            return self._hit_or_open(path, client, key, judgement, None, now, local), parsed.length
        assert parsed.source is not None
        judgement = self.policy.judge(parsed.source, family, path.target)
        named = parsed.source if isinstance(judgement, DropReason) else judgement[1]
        key = (path.target, sockaddr_bytes(family_of(named[0]), named))
        outgoing = None
        if not isinstance(judgement, DropReason) and judgement[0] is Verdict.HEADER:
            assert parsed.destination is not None
            outgoing = chained_header(judgement[1], parsed.destination)
        self._headers.put(header, (path, key, judgement, outgoing))
        return self._hit_or_open(path, client, key, judgement, outgoing, now, local), parsed.length

    def _hit_or_open(  # noqa: PLR0913, PLR0917 - hot path: no object per datagram
        self,
        path: Path,
        client: bytes,
        key: FlowKey,
        judgement: Judgement,
        outgoing: bytearray | DropReason | None,
        now: float,
        local: bytes | None,
    ) -> ProxiedAction:
        """The flow of a header's client, marked as used; or a new one (or a drop) as for any client.
        With --send-proxy-protocol the flow's header is `outgoing` (the received header's client and
        destination), or for a LOCAL one (None) the header naming the address the sender sent to."""
        flow = self.flows.lookup(key)
        if flow is None:
            return self._open(path, client, key, judgement, now, None, local, outgoing)
        if isinstance(outgoing, DropReason) and flow.header is not None:
            return self._drop(path, client, outgoing.value)
        if flow.path is not path or flow.raw_peer != client:  # replies go to the latest sender
            flow.redirect(path, client)
        if local is not None:
            flow.local_address = local
        if flow.header is not None:
            if isinstance(outgoing, bytearray):
                flow.header, flow.header_path = outgoing, None
            elif (
                flow.header_path is not path or flow.header_local != flow.local_address
            ) and not readdress_header(flow, self.source_toward):
                return self._drop(path, client, DropReason.FAMILY_MISMATCH.value)
        flow.last_used = now
        flow.referenced = True
        self.counters.forwarded += 1
        return flow

    def outside_range(self, path: Path, client: bytes, original: bytes | None) -> Drop:
        """A range listener's datagram (on `path`) that its PortMap gave no Path: sent to a port outside
        the range, or (`original` None or empty) with no original destination the kernel told. The drop
        names the address and port the client asked (as its log line's "to"), not the range's backend."""
        if not original:
            return self._drop(path, client, DropReason.UNKNOWN_DESTINATION.value)
        return self._drop(_asked(path, original), client, DropReason.OUTSIDE_RANGE.value)

    def range_loop(self, ports: PortMap, path: Path, client: bytes, original: bytes) -> Drop | None:
        """A drop (`loop`) when a range listener's datagram was sent to one of our own destinations on
        this host (PortMap.watch says why); None for any other. Only called when `ports.loops` has any."""
        address = ports.destination_of(original)
        if address is None or not self.policy.is_local(address):
            return None
        return self._drop(_asked(path, original), client, DropReason.LOOP.value)

    def serve_range(self, ports: PortMap) -> None:
        """Count a range listener's datagrams in and outside its range with the rest (STATUS=, metrics),
        and tell it our destinations, which no datagram it forwards may come back from (a loop)."""
        self.counters.ranges.append(ports.counts)
        ports.watch(self.policy.backends)

    def receive_failed(self, path: Path, error_number: int) -> Drop:
        """Receiving from `path`'s listening socket failed."""
        return self._drop(path, None, drop_key(DropReason.RECEIVE_ERROR, errno_name(error_number)))

    # --- events back -------------------------------------------------------------------------------------

    def flow_opened(self, flow: Flow, handle: socket.socket | None) -> CloseFlows | None:
        """The engine opened `handle` for `flow` (None: the flow needs no socket, on the raw send path):
        keep it (as used when its first datagram arrived); the flows evicted to make room must be closed."""
        flow.socket = handle
        evicted = self.flows.add(flow.key, flow, flow.last_used)
        for sender in flow.senders:
            self._senders[sender] = flow
        return self._gone(evicted) if evicted else None

    def open_failed(self, flow: Flow, error_number: int) -> Drop:
        """Opening `flow`'s socket failed: its datagram is a send error, and no flow is kept."""
        return self._failed(flow.path, flow.raw_peer, error_number)

    def send_failed(self, path: Path, client: bytes, error_number: int) -> Drop:
        """A datagram of `client` (counted as forwarded) could not be sent."""
        return self._failed(path, client, error_number)

    def send_once_failed(self, action: SendOnce, error_number: int) -> Drop:
        """The one-shot send of a local source failed."""
        return self._failed(action.path, action.client, error_number, Verdict.ONCE)

    def _failed(self, path: Path, client: bytes, error_number: int, verdict: Verdict = Verdict.BIND) -> Drop:
        """The one place an errno becomes a drop (of the kind the policy says)."""
        self.counters.forwarded -= 1
        reason = self.policy.refused(error_number, verdict)
        return self._drop(path, client, drop_key(reason, errno_name(error_number)))

    def _drop(self, path: Path, client: bytes | None, key: str) -> Drop:
        self.counters.dropped[key] += 1
        return Drop(key, path, client)

    # --- time -----------------------------------------------------------------------------------------------

    def expire(self, now: float) -> CloseFlows:
        """The flows idle for longer than the idle timeout, and those whose source address has become local
        to this host (a local program must be free to bind it), or a broadcast address of it, since they
        were opened: out of the table."""
        stale = self.flows.expire(now)
        self.policy.forget()
        self._headers.clear()  # their clients were judged with the answers just forgotten
        for flow in self.flows.values():
            if not self.policy.keeps(flow.presented, flow.path.destination.family, flow.path.target):
                self.flows.remove(flow.key)
                stale.append(flow)
        return self._gone(stale)

    def next_deadline(self) -> float:
        """When `on_timer` has work next: the next idle sweep (never, before the first call starts it)."""
        return float("inf") if self._next_sweep is None else self._next_sweep

    def on_timer(self, now: float) -> CloseFlows | None:
        """What is due at `now`: the idle sweep (`expire`), every `sweep_interval` seconds from the first
        call, which starts the clock. None when nothing is due."""
        if self._next_sweep is not None and now < self._next_sweep:
            return None
        due = self._next_sweep is not None
        self._next_sweep = now + self.sweep_interval
        return self.expire(now) if due else None

    def close(self) -> CloseFlows:
        """Every flow, at shutdown."""
        return self._gone(self.flows.clear())

    def _gone(self, flows: list[Flow]) -> CloseFlows:
        """Flows that left the table: their senders miss again, and so do the keys of their steered replies;
        the engine closes their sockets."""
        senders, steered = self._senders, self._steered
        for flow in flows:
            for sender in flow.senders:
                senders.pop(sender, None)
            if flow.steered is not None:
                for key in flow.steered:
                    steered.pop(key, None)
        return CloseFlows(tuple(flows))


def _asked(path: Path, original: bytes) -> Path:
    """`path` (a range listener's) naming the address and port a dropped datagram asked, the raw struct
    sockaddr `original`, as its destination: what the drop's log line shows after "to"."""
    asked = decode_sockaddr(original)
    family = socket.AF_INET if len(original) == 16 else socket.AF_INET6
    return Path(path.name, Destination(family, str(asked[0]), int(asked[1])), path.listen)
