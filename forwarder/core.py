"""The forwarder's decisions, with no sockets: which source address to present for a client, whether a
datagram is forwarded or dropped (and why), which families a listener can serve, what is a loop, which
flows to keep. Adapters (sockets.py, sender.py, engine.py) do the I/O around these rules.
"""

import enum
import ipaddress
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

SockAddr = tuple[str, int] | tuple[str, int, int, int]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DropReason(enum.Enum):
    """Why a datagram was not forwarded, or a reply not relayed; the value is the word used in STATUS=,
    the metrics file and logs."""

    TRUNCATED = "truncated"
    FAMILY_MISMATCH = "family-mismatch"
    LOOPBACK_SOURCE = "loopback-source"
    LOCAL_SOURCE = "local-source"
    ZERO_PORT = "zero-port"
    LINK_LOCAL_SOURCE = "link-local-source"
    UNSPECIFIED_SOURCE = "unspecified-source"
    BROADCAST_SOURCE = "broadcast-source"
    MULTICAST_SOURCE = "multicast-source"
    BACKEND_SOURCE = "backend-source"
    SEND_ERROR = "send-error"
    RECEIVE_ERROR = "receive-error"
    # A reply from the backend (relay mode) that never reached its client.
    REPLY_TRUNCATED = "reply-truncated"
    REPLY_UNMATCHED = "reply-unmatched"
    REPLY_IN_DIRECT_MODE = "reply-in-direct-mode"
    REPLY_SEND_ERROR = "reply-send-error"
    REPLY_RECEIVE_ERROR = "reply-receive-error"


def decimal(text: str) -> int | None:
    """The value of `text` when it is a plain decimal number in ASCII digits, as systemd and users write
    them, else None. Unlike int() it refuses '²' (a digit to str.isdigit, not to int), ' 1', '+1', '1_0',
    and numbers with more digits than int() converts (sys.get_int_max_str_digits)."""
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return int(text)
    except ValueError:
        return None


def plain_address(host: str) -> Address:
    """The address in `host`, without a scope id, and a v4-mapped IPv6 address as plain IPv4."""
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def presentable_source(
    client: SockAddr,
    destination_family: socket.AddressFamily,
    is_broadcast: Callable[[str], bool] | None = None,
) -> tuple[str, int] | DropReason:
    """The (address, port) to bind to so the backend sees `client`, or why that cannot be done.

    A v4-mapped IPv6 client (from a dual-stack listener) is presented as plain IPv4 to an IPv4 backend.
    Source port 0 is legal on the wire but cannot be bound (the kernel would pick another port). The
    unspecified address, broadcast and multicast addresses can be bound, but then the kernel picks the
    source (the host's own address): they are dropped before any bind. `is_broadcast` tells whether an IPv4
    address is the directed broadcast of one of the host's subnets (the limited broadcast always is).
    """
    if int(client[1]) == 0:
        return DropReason.ZERO_PORT
    address = plain_address(str(client[0]))
    wanted = 4 if destination_family == socket.AF_INET else 6
    if address.version != wanted:
        return DropReason.FAMILY_MISMATCH
    if address.is_unspecified:
        return DropReason.UNSPECIFIED_SOURCE
    if address.is_multicast:
        return DropReason.MULTICAST_SOURCE
    if address == LIMITED_BROADCAST or (address.version == 4 and is_broadcast and is_broadcast(str(address))):
        return DropReason.BROADCAST_SOURCE
    if address.is_loopback:
        return DropReason.LOOPBACK_SOURCE
    if address.version == 6 and address.is_link_local:  # valid on the client's link only, not the backend's
        return DropReason.LINK_LOCAL_SOURCE
    return (str(address), int(client[1]))


def decode_sockaddr(raw: bytes | memoryview) -> SockAddr:
    """A raw struct sockaddr_in / sockaddr_in6 (as recvmmsg writes it) as the tuple the socket module
    would give."""
    family = int.from_bytes(raw[0:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    flowinfo = int.from_bytes(raw[4:8], "big")
    scope = int.from_bytes(raw[24:28], "little")
    return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope)


def sockaddr_bytes(family: socket.AddressFamily, address: SockAddr) -> bytes:
    """The struct sockaddr_in / sockaddr_in6 for a socket-module address tuple: the inverse of
    decode_sockaddr (flow info and scope id included when given)."""
    port = int(address[1]).to_bytes(2, "big")
    host = str(address[0]).partition("%")[0]
    if family == socket.AF_INET:
        return socket.AF_INET.to_bytes(2, "little") + port + socket.inet_pton(socket.AF_INET, host) + bytes(8)
    flowinfo = int(address[2]) if len(address) > 2 else 0
    scope = int(address[3]) if len(address) > 3 else 0
    return (
        socket.AF_INET6.to_bytes(2, "little")
        + port
        + flowinfo.to_bytes(4, "big")
        + socket.inet_pton(socket.AF_INET6, host)
        + scope.to_bytes(4, "little")
    )


def served_families(
    listener_family: socket.AddressFamily, bound_address: str, v6only: bool
) -> frozenset[socket.AddressFamily]:
    """The destination families a listener's clients can be presented to.

    An IPv4 socket only has IPv4 clients; an IPv6 socket bound to `::` without IPV6_V6ONLY also has
    (v4-mapped) IPv4 clients; one bound to a v4-mapped address has only those.
    """
    if listener_family == socket.AF_INET:
        return frozenset({socket.AF_INET})
    address = ipaddress.IPv6Address(bound_address.partition("%")[0])
    if address.ipv4_mapped is not None:
        return frozenset({socket.AF_INET})
    if address == ipaddress.IPv6Address("::") and not v6only:
        return frozenset({socket.AF_INET6, socket.AF_INET})
    return frozenset({socket.AF_INET6})


def is_loop(
    destination: tuple[str, int],
    listener: tuple[str, int],
    listener_families: frozenset[socket.AddressFamily],
    is_local: Callable[[str], bool],
) -> bool:
    """True when datagrams sent to `destination` would arrive on `listener` (bound address, port).

    A wildcard listener (0.0.0.0 or ::) receives on every local address of the families it serves.
    """
    if destination[1] != listener[1]:
        return False
    target = plain_address(destination[0])
    bound = plain_address(listener[0])
    if target == bound:
        return True
    if not bound.is_unspecified:
        return False
    family = socket.AF_INET if target.version == 4 else socket.AF_INET6
    return family in listener_families and is_local(str(target))


def drop_key(reason: DropReason, detail: str = "") -> str:
    """The counter and log key of a drop: the reason, and the errno name when there is one."""
    return f"{reason.value}:{detail}" if detail else reason.value


def _reasons(counts: Counter[str]) -> str:
    """' (a 1, b 2)' for the keys with a count, sorted; '' when there are none."""
    if not counts:
        return ""
    return " (" + ", ".join(f"{key} {count}" for key, count in sorted(counts.items())) + ")"


@dataclass(frozen=True, slots=True)
class Totals:
    """The counts since start, for the metrics file."""

    forwarded: int
    dropped: Counter[str]
    relayed: int
    reply_dropped: Counter[str]
    icmp_errors: Counter[str]


@dataclass(slots=True)
class Counters:
    """Forwarded datagrams and drops by reason (and errno), replies relayed and reply drops by reason, ICMP
    errors reported on flow sockets by type: this interval's, and the totals of the intervals before it.
    This is the one home of the counts: STATUS= and the metrics file both read them here. `relay` says
    the replies are counted at all (--reply relay), so STATUS= names them even while they are 0."""

    relay: bool = False
    forwarded: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    relayed: int = 0
    reply_dropped: Counter[str] = field(default_factory=Counter)
    icmp_errors: Counter[str] = field(default_factory=Counter)
    total_forwarded: int = 0
    total_dropped: Counter[str] = field(default_factory=Counter)
    total_relayed: int = 0
    total_reply_dropped: Counter[str] = field(default_factory=Counter)
    total_icmp_errors: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: DropReason, detail: str = "") -> None:
        self.dropped[drop_key(reason, detail)] += 1

    def since_start(self) -> Totals:
        """The counts since start, this interval included."""
        return Totals(
            self.total_forwarded + self.forwarded,
            self.total_dropped + self.dropped,
            self.total_relayed + self.relayed,
            self.total_reply_dropped + self.reply_dropped,
            self.total_icmp_errors + self.icmp_errors,
        )

    def summary(self, seconds: float, flows: int | None = None) -> str:
        """The STATUS= line: this interval's forwarded count and drops by reason (then its replies and
        ICMP errors, when there are any to tell), then the totals."""
        dropped = sum(self.dropped.values())
        text = f"{self.forwarded} datagrams forwarded in the last {seconds:g} seconds, {dropped} dropped"
        text += _reasons(self.dropped)
        totals = self.since_start()
        replies = self.relay or totals.relayed or totals.reply_dropped
        if replies:
            reply_dropped = sum(self.reply_dropped.values())
            text += f"; {self.relayed} replies relayed, {reply_dropped} dropped{_reasons(self.reply_dropped)}"
        if self.icmp_errors:
            text += f"; {sum(self.icmp_errors.values())} ICMP errors{_reasons(self.icmp_errors)}"
        text += f"; since start {totals.forwarded} forwarded, {sum(totals.dropped.values())} dropped"
        if replies:
            text += (
                f", {totals.relayed} replies relayed, {sum(totals.reply_dropped.values())} replies dropped"
            )
        if totals.icmp_errors:
            text += f", {sum(totals.icmp_errors.values())} ICMP errors"
        if flows is not None:
            text += f"; {flows} flows"
        return text + "."

    def reset(self) -> None:
        """Start a new interval, keeping the totals."""
        self.total_forwarded += self.forwarded
        self.total_dropped.update(self.dropped)
        self.total_relayed += self.relayed
        self.total_reply_dropped.update(self.reply_dropped)
        self.total_icmp_errors.update(self.icmp_errors)
        self.forwarded = self.relayed = 0
        self.dropped.clear()
        self.reply_dropped.clear()
        self.icmp_errors.clear()


K = TypeVar("K")
V = TypeVar("V")


class Entry:
    """What a FlowTable holds: anything with these two fields (a flow subclasses it)."""

    __slots__ = ("last_used", "referenced")

    def __init__(self) -> None:
        self.last_used = 0.0
        self.referenced = False  # used since it was inserted or last given a second chance


E = TypeVar("E", bound=Entry)


class FlowTable(Generic[K, E]):
    """A bounded map of flows with second-chance (CLOCK) eviction, an approximation of LRU, and an idle
    timeout.

    A hit is one dict lookup plus two attribute stores, instead of reordering on every hit. When full, the
    oldest-inserted entry is evicted unless it was referenced since it was inserted or last spared, in
    which case it is spared once: its bit is cleared, it moves to the back, and the next one is considered.
    `lookup` is that dict lookup itself (the dict's own get, no call of ours): a caller on a hot path may use
    it and mark a hit as `get` does, `entry.last_used = now; entry.referenced = True`.
    """

    def __init__(self, capacity: int, idle_timeout: float) -> None:
        if capacity < 1:
            raise ValueError(f"capacity {capacity!r} must be at least 1")
        self.capacity = capacity
        self.idle_timeout = idle_timeout
        self._entries: dict[K, E] = {}
        self.lookup: Callable[[K], E | None] = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K, now: float) -> E | None:
        """The entry for `key`, marked as used at `now`, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.last_used = now
        entry.referenced = True
        return entry

    def add(self, key: K, entry: E, now: float) -> list[E]:
        """Insert `entry` as used at `now` under `key` (not present); return the entries evicted to make
        room, for the caller to close."""
        evicted: list[E] = []
        entries = self._entries
        while len(entries) >= self.capacity:
            oldest_key = next(iter(entries))
            oldest = entries.pop(oldest_key)
            if oldest.referenced:
                oldest.referenced = False  # second chance
                entries[oldest_key] = oldest
            else:
                evicted.append(oldest)
        entry.last_used = now
        entry.referenced = False
        entries[key] = entry
        return evicted

    def remove(self, key: K) -> E | None:
        return self._entries.pop(key, None)

    def expire(self, now: float) -> list[E]:
        """Remove and return the entries idle for longer than the idle timeout."""
        limit = now - self.idle_timeout
        stale = [key for key, entry in self._entries.items() if entry.last_used < limit]
        return [self._entries.pop(key) for key in stale]

    def clear(self) -> list[E]:
        """Remove and return every entry."""
        entries = list(self._entries.values())
        self._entries.clear()
        return entries

    def values(self) -> list[E]:
        """The entries, oldest inserted first (a snapshot: the table may change while iterating)."""
        return list(self._entries.values())

    def __iter__(self) -> Iterator[K]:
        """The keys, oldest inserted first (a snapshot: the table may change while iterating)."""
        return iter(list(self._entries))


def bounded_put(cache: dict[K, V], key: K, value: V, capacity: int) -> None:
    """Store `key` in a small answer cache, emptying it first when full (answers are cheap to redo)."""
    if len(cache) >= capacity:
        cache.clear()
    cache[key] = value


def duplicates(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, in order of their second occurrence."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated
