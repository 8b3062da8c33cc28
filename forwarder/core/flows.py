"""Flows and the table that keeps them: a client's flow to one destination, keyed by the 4-tuple, in a bounded
table with second-chance eviction and an idle timeout.
"""

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from forwarder.core.addresses import SockAddr, decode_sockaddr, endpoint_text
from forwarder.core.destination import Destination

# --max-flows and --flow-idle-timeout by default.
DEFAULT_MAX_FLOWS = 4096
DEFAULT_IDLE_TIMEOUT = 60.0

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
    it and mark a hit: `entry.last_used = now; entry.referenced = True`.
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


def bounded_put(cache: dict[K, V], key: K, value: V, capacity: int) -> None:
    """Store `key` in a small answer cache, emptying it first when full (answers are cheap to redo)."""
    if len(cache) >= capacity:
        cache.clear()
    cache[key] = value


# A flow key: (destination address, the client's canonical struct sockaddr: see canonical_sockaddr); a sender
# key: (destination address, the sender's raw struct sockaddr, as received).
FlowKey = tuple[tuple[str, int], bytes]


_AF_INET6 = socket.AF_INET6.to_bytes(2, "little")


_AF_INET = socket.AF_INET.to_bytes(2, "little")


_V4_MAPPED = bytes(10) + b"\xff\xff"


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
    """One client's flow to one destination, with the socket the engine opened for it (`socket`).

    Returned by `receive`, the flow is also the action "send this datagram on the flow's open socket"; by
    `reply_received`, "relay this reply to the flow's client": the hot paths allocate nothing.
    """

    __slots__ = (
        "header",
        "header_local",
        "header_path",
        "headers",
        "key",
        "local_address",
        "path",
        "peer",
        "presented",
        "raw",
        "raw_peer",
        "senders",
        "socket",
        "steered",
    )

    def __init__(  # noqa: PLR0913 - a record of what a flow is: one field each
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
        # The latest sender's raw sockaddr, as received (the client, or the load balancer that named it),
        # and decoded: where the flow's replies go.
        self.raw_peer = key[1] if client is None else client
        self.peer = address if address is not None else decode_sockaddr(self.raw_peer)
        self.presented = source  # the (address, port) presented to the backend as the datagrams' source
        # The raw address the client sent to (IP_PKTINFO), on a wildcard listener: the replies' source.
        self.local_address = local
        self.socket: socket.socket | None = None  # the flow's own socket, when it has one
        # --send-proxy-protocol: the PROXY header the flow's datagrams get, and what it names: the listener
        # (`header_path`; None for a header decided by a received one) and the address the client sent to
        # (`header_local`); those built for other listeners and addresses are kept in `headers`.
        self.header: bytearray | None = None
        self.header_path: Path | None = None
        self.header_local: bytes | None = None
        self.headers: dict[tuple[Path, bytes | None], bytearray] | None = None
        # The sender keys that lead to this flow (forgotten with it).
        self.senders: list[FlowKey] = []
        # --reply-tproxy: the keys its steered replies were learned under (forgotten with it).
        self.steered: list[bytes] | None = None
        # On the raw send path: what its datagrams need there (forwarder.io.rawsend.RawFlow), built once.
        self.raw: object | None = None

    def redirect(self, path: Path, client: bytes) -> None:
        """The flow's replies now go to `client` (its latest sender) through `path`'s listening socket; the
        local address it sent to is set after this (or unknown: never one seen on another socket)."""
        self.path = path
        self.raw_peer = client
        self.peer = decode_sockaddr(client)
        self.local_address = None

    def __repr__(self) -> str:
        return f"Flow({endpoint_text(self.presented)} -> {self.path.destination})"


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
