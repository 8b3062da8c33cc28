"""The machine's side of the backend's replies (relay mode): which flow's client a reply goes to, or why
none, whether it came on the flow's own socket or on the one tproxy reply socket (matched by its source,
the backend, and its original destination, the client: one dict lookup), and the ICMP errors about a
flow's datagrams, counted by type. Part of ForwardingMachine.

A steered reply's flow is learned under a key the engine gives, the bytes it read the reply's source and
client from (opaque here: the same source and client always give the same key, and a key names one of
each); from then on a whole batch of replies is matched by one lookup each, in C (`steered_flows`). A key
is forgotten with its flow, so a reply of an evicted flow is never sent to its successor.
"""

import socket
from collections.abc import Callable, Sequence

from forwarder.core.actions import Drop
from forwarder.core.addresses import SockAddr, decode_sockaddr, plain_address
from forwarder.core.counters import Counters, DropReason, drop_key, errno_name
from forwarder.core.flows import Flow, FlowKey, FlowTable, Path, bounded_put
from forwarder.core.icmp import QueuedError

MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: an IntFlag makes every `flags & MSG_TRUNC` an enum call
# Reply sources remembered decoded (the backends, and whatever else the steering lets through).
REPLY_TARGETS = 1024
# The keys a flow's steered replies are learned under, at most (normally one).
STEERED_KEYS_PER_FLOW = 4


class ReplyRules:
    """The reply rules of ForwardingMachine, which sets these fields."""

    relay: bool
    flows: FlowTable[FlowKey, Flow]
    counters: Counters
    # The raw sockaddr a reply on the reply socket came from -> the (address, port) it names.
    _reply_targets: dict[bytes, tuple[str, int]]
    # A steered reply's key -> its flow (learned by reply_arrived, forgotten with the flow), and its get.
    _steered: dict[bytes, Flow]
    _steered_get: Callable[[bytes], Flow | None]

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

    def steered_flows(self, keys: Sequence[bytes], now: float) -> tuple[list[Flow | None], int]:
        """The flows of a batch of steered replies (none truncated), each named by its key, and how many
        were found: a flow learned under the key (the reply counts as relayed and as use of the flow), or
        None for a key not learned yet, whose reply the engine hands to reply_arrived."""
        flows = list(map(self._steered_get, keys))
        found = list(filter(None, flows))  # a flow is always true: the C loop drops only the Nones
        for flow in found:
            flow.last_used = now
            flow.referenced = True
        self.counters.relayed += len(found)
        return flows, len(found)

    def reply_arrived(  # noqa: PLR0913 - the hot path's reply metadata as plain arguments
        self,
        source: bytes,
        client: bytes | None,
        size: int,
        flags: int,
        now: float,
        *,
        key: bytes | None = None,
    ) -> "Flow | Drop":
        """A reply of `size` bytes from the raw sockaddr `source` to the client `client` (the raw original
        destination the tproxy rule kept; None or b"" when the kernel gave none) arrived on the reply
        socket: the flow whose client it is relayed to (it counts as use of that flow), or why not. Its
        flow is the one of its backend and client, as on the forward path (one dict lookup, the source's
        decoding cached); a reply from no backend of ours, without its client, or whose flow is gone
        (evicted) is `reply-unmatched`: never sent anywhere else. A relayed reply's `key` (None: none)
        finds the flow in steered_flows from now on, while the flow lasts."""
        flow = None
        if client:
            target = self._reply_targets.get(source)
            if target is None:
                target = self._reply_target(source)
            flow = self.flows.lookup((target, client))
        if flow is None:
            reason = DropReason.REPLY_TRUNCATED if flags & MSG_TRUNC else DropReason.REPLY_UNMATCHED
            return self._steered_drop(None, client, reason)
        if flags & MSG_TRUNC:
            return self._steered_drop(flow.path, client, DropReason.REPLY_TRUNCATED)
        if key is not None:
            self._learn(key, flow)
        flow.last_used = now
        flow.referenced = True
        self.counters.relayed += 1
        return flow

    def _learn(self, key: bytes, flow: Flow) -> None:
        """Remember `flow` under a steered reply's `key` (a few keys per flow at most: its backend's
        replies normally read one way, and a source seen some other way costs only the slower match)."""
        keys = flow.steered
        if keys is None:
            keys = flow.steered = []
        if key not in keys and len(keys) < STEERED_KEYS_PER_FLOW:
            keys.append(key)
            self._steered[key] = flow

    def _reply_target(self, source: bytes) -> tuple[str, int]:
        """The (address, port) a raw reply source names, as flows are keyed (a v4-mapped one as IPv4, so
        an IPv4 backend's reply on a dual-stack reply socket finds its flow); kept in a bounded cache."""
        address = decode_sockaddr(source)
        target = (str(plain_address(str(address[0]))), int(address[1]))
        bounded_put(self._reply_targets, source, target, REPLY_TARGETS)
        return target

    def steered_receive_failed(self, error_number: int) -> Drop:
        """Receiving from the reply socket failed (no flow to name)."""
        return self._steered_drop(None, None, DropReason.REPLY_RECEIVE_ERROR, errno_name(error_number))

    def _steered_drop(
        self, path: Path | None, client: bytes | None, reason: DropReason, detail: str = ""
    ) -> Drop:
        key = drop_key(reason, detail)
        self.counters.reply_dropped[key] += 1
        return Drop(key, path, client or None, reply=True)

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
        return Drop(key, flow.path, flow.raw_peer, reply=True)
