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
    """Why a datagram was not forwarded; the value is the word used in STATUS= and logs."""

    TRUNCATED = "truncated"
    FAMILY_MISMATCH = "family-mismatch"
    LOOPBACK_SOURCE = "loopback-source"
    LOCAL_SOURCE = "local-source"
    ZERO_PORT = "zero-port"
    LINK_LOCAL_SOURCE = "link-local-source"
    UNSPECIFIED_SOURCE = "unspecified-source"
    BROADCAST_SOURCE = "broadcast-source"
    MULTICAST_SOURCE = "multicast-source"
    SEND_ERROR = "send-error"
    RECEIVE_ERROR = "receive-error"


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


@dataclass(slots=True)
class Counters:
    """Forwarded datagrams and drops by reason (and errno): this interval's, and the totals since start."""

    forwarded: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    total_forwarded: int = 0
    total_dropped: int = 0

    def drop(self, reason: DropReason, detail: str = "") -> None:
        self.dropped[drop_key(reason, detail)] += 1

    def summary(self, seconds: float, flows: int | None = None) -> str:
        """The STATUS= line: this interval's forwarded count and drops by reason, then the totals."""
        dropped = sum(self.dropped.values())
        text = f"{self.forwarded} datagrams forwarded in the last {seconds:g} seconds, {dropped} dropped"
        if self.dropped:
            text += " (" + ", ".join(f"{key} {count}" for key, count in sorted(self.dropped.items())) + ")"
        text += (
            f"; since start {self.total_forwarded + self.forwarded} forwarded,"
            f" {self.total_dropped + dropped} dropped"
        )
        if flows is not None:
            text += f"; {flows} flows"
        return text + "."

    def reset(self) -> None:
        """Start a new interval, keeping the totals."""
        self.total_forwarded += self.forwarded
        self.total_dropped += sum(self.dropped.values())
        self.forwarded = 0
        self.dropped.clear()


K = TypeVar("K")
V = TypeVar("V")


class _Entry(Generic[V]):
    __slots__ = ("last_used", "referenced", "value")

    def __init__(self, value: V, now: float) -> None:
        self.value = value
        self.last_used = now
        self.referenced = False  # used since it was inserted or last given a second chance


class FlowTable(Generic[K, V]):
    """A bounded map of flows with second-chance (CLOCK) eviction, an approximation of LRU, and an idle
    timeout.

    A hit is one dict lookup plus two attribute stores, instead of reordering on every hit. When full, the
    oldest-inserted entry is evicted unless it was referenced since it was inserted or last spared, in
    which case it is spared once: its bit is cleared, it moves to the back, and the next one is considered.
    """

    def __init__(self, capacity: int, idle_timeout: float) -> None:
        if capacity < 1:
            raise ValueError(f"capacity {capacity!r} must be at least 1")
        self.capacity = capacity
        self.idle_timeout = idle_timeout
        self._entries: dict[K, _Entry[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: K, now: float) -> V | None:
        """The value for `key`, marked as used at `now`, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        entry.last_used = now
        entry.referenced = True
        return entry.value

    def add(self, key: K, value: V, now: float) -> list[V]:
        """Insert `key` (not present); return the values evicted to make room, for the caller to close."""
        evicted: list[V] = []
        entries = self._entries
        while len(entries) >= self.capacity:
            oldest_key = next(iter(entries))
            oldest = entries.pop(oldest_key)
            if oldest.referenced:
                oldest.referenced = False  # second chance
                entries[oldest_key] = oldest
            else:
                evicted.append(oldest.value)
        entries[key] = _Entry(value, now)
        return evicted

    def remove(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        return None if entry is None else entry.value

    def expire(self, now: float) -> list[V]:
        """Remove and return the values idle for longer than the idle timeout."""
        limit = now - self.idle_timeout
        stale = [key for key, entry in self._entries.items() if entry.last_used < limit]
        return [self._entries.pop(key).value for key in stale]

    def clear(self) -> list[V]:
        """Remove and return every value."""
        values = [entry.value for entry in self._entries.values()]
        self._entries.clear()
        return values

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
