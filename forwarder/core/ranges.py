"""Port ranges: one (TPROXY) socket serving many ports. The rule a range destination writes
(`FIRST-LAST@HOST[:PORT|:BFIRST-BLAST]`) maps the port a client sent to (the datagram's original
destination, which the kernel tells per datagram) to the backend's port; a port outside the range maps to
nothing and the datagram is never forwarded. This module is that rule's one home, and of the per-range
counts.

Per datagram the rule is arithmetic and a list index: each port's Path (the backend port it goes to) is
built the first time a datagram asks for it and kept, so a flow is keyed by (backend, client) as on a plain
listener, and a client talking to two ports of a range has two flows.
"""

import socket
from collections.abc import Iterable

from forwarder.core.addresses import plain_address
from forwarder.core.destination import Destination, PortRange
from forwarder.core.flows import Path


class RangeCounts:
    """A range listener's datagrams in its range (handed to the machine) and outside it (dropped), this
    interval and since start; `label` names the listener and the range (`media 27000-27050`)."""

    __slots__ = ("label", "listener", "outside", "ports", "received", "total_outside", "total_received")

    def __init__(self, listener: str, ports: PortRange) -> None:
        self.listener = listener
        self.ports = ports
        self.label = f"{listener} {ports}"
        self.received = self.outside = self.total_received = self.total_outside = 0

    def reset(self) -> None:
        """Start a new interval, keeping the totals."""
        self.total_received += self.received
        self.total_outside += self.outside
        self.received = self.outside = 0

    def summary(self) -> str:
        """This interval's part of the STATUS= line: one entry per range, never one per port."""
        return f"ports {self.ports} on {self.listener}: {self.received} received, {self.outside} outside"


class PortMap:
    """Which backend port each port of a listener's range goes to, and the Path of each (built once).

    `backend` is the destination of the range's first port; `spread`: ports map by offset (the same port,
    or `:BFIRST-BLAST`); otherwise every port goes to `backend.port`. `listen` is the socket's address."""

    __slots__ = ("_paths", "backend", "counts", "first", "listen", "loops", "name", "ports", "size", "spread")

    def __init__(  # noqa: PLR0913 - the parts of one rule
        self,
        name: str,
        ports: PortRange,
        backend: Destination,
        *,
        spread: bool,
        listen: tuple[str, int] | None = None,
        counts: RangeCounts | None = None,
    ) -> None:
        self.name = name
        self.ports = ports
        self.first = ports.first
        self.size = ports.size
        self.backend = backend
        self.spread = spread
        self.listen = listen
        self.counts = counts if counts is not None else RangeCounts(name, ports)
        # One Path per port of the range when ports map by offset, else one shared by all.
        self._paths: list[Path | None] = [None] * (self.size if spread else 1)
        # Our destinations whose ports lie in this range (address, those ports): see watch().
        self.loops: tuple[tuple[str, PortRange], ...] = ()

    @classmethod
    def of(
        cls,
        name: str,
        ports: PortRange,
        backend: Destination,
        backend_ports: PortRange | None,
        port: int | None,
    ) -> "PortMap":
        """The rule of a destination `FIRST-LAST@HOST`, `...:PORT` or `...:BFIRST-BLAST` resolved to
        `backend` (its address; the port is this rule's)."""
        if port is not None:
            return cls(name, ports, Destination(backend.family, backend.address, port), spread=False)
        first = ports.first if backend_ports is None else backend_ports.first
        return cls(name, ports, Destination(backend.family, backend.address, first), spread=True)

    def backend_port(self, port: int) -> int | None:
        """The backend port a datagram sent to `port` goes to; None when `port` is outside the range."""
        offset = port - self.first
        if not 0 <= offset < self.size:
            return None
        return self.backend.port + offset if self.spread else self.backend.port

    def path_for(self, original: bytes) -> Path | None:
        """The Path of a datagram whose original destination is the raw struct sockaddr `original` (its
        port at bytes 2-3 in both families), counted as received; None (counted as outside) when its port
        is outside the range. The hot path of a range listener: no object per datagram once a port has
        been seen."""
        offset = (original[2] << 8 | original[3]) - self.first
        if 0 <= offset < self.size:
            self.counts.received += 1
            paths = self._paths
            if not self.spread:
                offset = 0
            path = paths[offset]
            if path is None:
                path = paths[offset] = self._build(offset)
            return path
        self.counts.outside += 1
        return None

    def watch(self, backends: "Backends") -> None:
        """Remember which of our destinations (every route's, this one's included) have ports in this
        range. A datagram to one of them arriving here, when its address is this host's, is our own
        datagram that the tproxy rule steered straight back (a range whose backend is on this host, in the
        ports the rule steers): forwarding it again would circle for ever. Empty, as usual, it costs one
        test per datagram."""
        loops = [
            (host, PortRange(port, port)) for host, port in sorted(backends.single) if port in self.ports
        ]
        for host, ports in backends.ranges:
            first, last = max(ports.first, self.ports.first), min(ports.last, self.ports.last)
            if first <= last:
                loops.append((host, PortRange(first, last)))
        self.loops = tuple(loops)

    def destination_of(self, original: bytes) -> str | None:
        """Our destination's address when the raw original destination `original` is one of those
        watch() found in this range (a v4-mapped one as IPv4); else None."""
        port = original[2] << 8 | original[3]
        host = reply_source(original)[1][0]
        for address, ports in self.loops:
            if address == host and port in ports:
                return address
        return None

    def _build(self, offset: int) -> Path:
        backend = self.backend
        port = backend.port + offset
        listen = None if self.listen is None else (self.listen[0], self.first + offset)
        return Path(self.name, Destination(backend.family, backend.address, port), listen)

    @property
    def backend_ports(self) -> PortRange:
        """The backend ports the range reaches."""
        if self.spread:
            return PortRange(self.backend.port, self.backend.port + self.size - 1)
        return PortRange(self.backend.port, self.backend.port)

    def __str__(self) -> str:
        ports = self.backend_ports
        target = self.backend.address if ":" not in self.backend.address else f"[{self.backend.address}]"
        return f"{self.ports}@{target}:{ports.first if ports.size == 1 else ports}"


def reply_source(original: bytes) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The family and (address, port) of a raw original destination (sockaddr_in, 16 bytes, or
    sockaddr_in6, 28): where a reply to its client must come from. A v4-mapped IPv6 one is IPv4."""
    port = original[2] << 8 | original[3]
    if len(original) == 16:
        return socket.AF_INET, (socket.inet_ntop(socket.AF_INET, original[4:8]), port)
    address = plain_address(socket.inet_ntop(socket.AF_INET6, original[8:24]))
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return family, (str(address), port)


class Backends:
    """Every destination's (address, port), the single ones and the ranges': answers `in` for the
    source policy (no client may claim a backend's address and port) and for the raw sockets' ICMP errors
    (only those about our own datagrams count)."""

    def __init__(
        self, single: Iterable[tuple[str, int]] = (), ranges: Iterable[tuple[str, PortRange]] = ()
    ) -> None:
        self.single = frozenset((str(plain_address(host)), port) for host, port in single)
        self.ranges = tuple((str(plain_address(host)), ports) for host, ports in ranges)

    def __contains__(self, item: object) -> bool:
        if item in self.single:
            return True
        if not self.ranges or not isinstance(item, tuple) or len(item) < 2:
            return False
        try:
            host = str(plain_address(str(item[0])))
        except ValueError:
            return False
        return any(host == address and item[1] in ports for address, ports in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.single or self.ranges)
