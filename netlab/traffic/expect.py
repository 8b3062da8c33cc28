"""Expectations that read like the sentence they check, with p4lang/ptf's vocabulary:

    backend = expect(lab["backend"], port=27000)          # listening from here on: call before traffic
    ...send...
    backend.datagram(src="203.0.113.7:4242", payload=b"hi").arrives(within=2).and_nothing_else()
    backend.datagrams(count=100, src="203.0.113.0/24").arrive(within=5)

An Inbox is a UDP socket bound in the node (dual-stack by default), so it is ready the moment it exists
and sees exactly what an application there would. Fields left out are don't-care (ANY). On failure an
ExpectationError shows the expected datagram next to the closest one that arrived, then all arrivals.
"""

import ipaddress
import json
import select
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from forwarder.io.linux import SO_RCVBUFFORCE  # not in the socket module
from netlab.addresses import format_endpoint, split_host_port
from netlab.errors import ExpectationError, NetlabError

if TYPE_CHECKING:
    from netlab.lab.node import LabNode


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()
"""A don't-care field."""

PayloadPattern = bytes | _Any | Callable[[bytes], bool]
PREVIEW = 24  # printable payloads up to this long are shown as text
HEAD = 8  # bytes of a longer payload shown in hex
CONTEXT = 16  # bytes of hex shown around a payload's first difference
LISTED = 10  # arrivals listed in a failure report; the rest are counted


@dataclass(frozen=True)
class Arrival:
    """A datagram that arrived: its source, payload, and when it was read (monotonic seconds)."""

    src: str
    sport: int
    payload: bytes
    time: float

    @property
    def source(self) -> str:
        return format_endpoint(self.src, self.sport)


def describe_payload(payload: bytes) -> str:
    """A short, readable rendering of a payload: short text as itself, anything else as its length and its
    first bytes in hex (32 raw bytes in a column read as noise)."""
    text = all(32 <= byte < 127 for byte in payload)
    if len(payload) <= (PREVIEW if text else 8):
        return f"{payload!r} ({len(payload)} bytes)"
    return f"{len(payload)} bytes: {payload[:HEAD].hex(' ')} ..."


def payload_context(expected: bytes, actual: bytes) -> list[str]:
    """The bytes around the first difference of two payloads, as hex lines one above the other; empty
    when they are equal."""
    offset = _first_difference(expected, actual)
    if offset is None:
        return []
    start = max(0, offset - 4)

    def row(payload: bytes) -> str:
        shown = payload[start : start + CONTEXT].hex(" ")
        return shown + (f" (ends at byte {len(payload)})" if len(payload) < start + CONTEXT else "")

    return [
        f"first difference at byte {offset}; bytes {start}.. in hex:",
        f"  expected  {row(expected)}",
        f"  arrived   {row(actual)}",
    ]


def _first_difference(expected: bytes, actual: bytes) -> int | None:
    for index, (a, b) in enumerate(zip(expected, actual, strict=False)):
        if a != b:
            return index
    return None if len(expected) == len(actual) else min(len(expected), len(actual))


def _normalize(address: str) -> str:
    parsed = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


@dataclass(frozen=True)
class SourcePattern:
    """Which sources match: an address or network (or ANY) and a port (or ANY).

    Written as '203.0.113.7:4242', '[2001:db8::7]:4242', '203.0.113.7' or '203.0.113.7:*' (any port),
    '*:4242' (any address), '203.0.113.0/24' or '2001:db8:113::/64' (a network, any port).
    """

    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None
    text: str

    @classmethod
    def parse(cls, text: "str | _Any") -> "SourcePattern":
        if isinstance(text, _Any) or text in ("*", "*:*"):
            return cls(None, None, "any source")
        host, port = split_host_port(text)
        port = port or "*"
        try:
            network = None if host == "*" else ipaddress.ip_network(host, strict=False)
            number = None if port == "*" else int(port)
        except ValueError:
            raise NetlabError(
                f"bad source pattern {text!r}: expected ADDRESS:PORT, [V6]:PORT, ADDRESS, "
                "NETWORK/LEN or *:PORT"
            ) from None
        return cls(network, number, text)

    def address_matches(self, address: str) -> bool:
        return self.network is None or ipaddress.ip_address(address) in self.network

    def port_matches(self, port: int) -> bool:
        return self.port is None or self.port == port


@dataclass(frozen=True)
class DatagramPattern:
    """What a test expects of one datagram; unset fields are don't-care."""

    src: SourcePattern
    payload: PayloadPattern = ANY
    size: int | _Any = ANY

    def differences(self, arrival: Arrival) -> list[str]:
        """The fields of `arrival` that do not match, each described (empty when it matches)."""
        found = []
        if not self.src.address_matches(arrival.src):
            found.append(f"source address {arrival.src} is not in {self.src.network}")
        if not self.src.port_matches(arrival.sport):
            found.append(f"source port {arrival.sport} is not {self.src.port}")
        if isinstance(self.payload, bytes):
            if arrival.payload != self.payload:
                found.append(_payload_difference(self.payload, arrival.payload))
        elif not isinstance(self.payload, _Any) and not self.payload(arrival.payload):
            found.append(f"payload rejected by {getattr(self.payload, '__name__', 'the predicate')}")
        if not isinstance(self.size, _Any) and len(arrival.payload) != self.size:
            found.append(f"size {len(arrival.payload)} is not {self.size}")
        return found

    def matches(self, arrival: Arrival) -> bool:
        return not self.differences(arrival)

    def describe(self) -> tuple[str, str]:
        """(source, payload) columns for the report."""
        if isinstance(self.payload, bytes):
            payload = describe_payload(self.payload)
        elif isinstance(self.payload, _Any):
            payload = "any" if isinstance(self.size, _Any) else f"any ({self.size} bytes)"
        else:
            payload = f"accepted by {getattr(self.payload, '__name__', 'a predicate')}"
        return self.src.text, payload


def _payload_difference(expected: bytes, actual: bytes) -> str:
    offset = _first_difference(expected, actual)
    assert offset is not None
    if len(expected) != len(actual):
        same = "the same bytes up to" if offset == min(len(expected), len(actual)) else "differs from"
        return f"payload is {len(actual)} bytes, not {len(expected)} ({same} byte {offset})"
    return f"payload differs from byte {offset} ({actual[offset]:#04x} instead of {expected[offset]:#04x})"


class Inbox:
    """Everything that arrives at one UDP port of a node, from the moment the Inbox is made."""

    def __init__(self, node: "LabNode", port: int, address: str | None = None) -> None:
        self.node = node
        self.port = port
        if address is None:
            sock = node.open_socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 arrives as ::ffff:a.b.c.d
            address = "::"
        else:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = node.open_socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)  # a burst must not overflow it
        sock.bind((address, port))
        sock.setblocking(False)
        self._sock = sock
        self.where = f"{node.name} udp {format_endpoint(address, port)}"
        self.opened = time.monotonic()
        self.arrived: list[Arrival] = []
        self._claimed: set[int] = set()
        self._reported: set[int] = set()  # shown in a failure already: not reported again as "else"

    # -- collecting
    def _read_available(self) -> None:
        while True:
            try:
                payload, source = self._sock.recvfrom(65536)
            except BlockingIOError:
                return
            self.arrived.append(Arrival(_normalize(source[0]), source[1], payload, time.monotonic()))

    def _collect_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Read arrivals until done() or the deadline; return done()."""
        while True:
            self._read_available()
            if done():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wait(remaining)

    def _wait(self, remaining: float) -> None:
        """Block until more may have arrived, at most `remaining` seconds."""
        select.select([self._sock], [], [], remaining)

    def unclaimed(self) -> list[Arrival]:
        """Arrivals no satisfied expectation has accounted for yet."""
        return [arrival for index, arrival in enumerate(self.arrived) if index not in self._claimed]

    # -- the vocabulary
    def datagram(
        self, *, src: "str | _Any" = ANY, payload: PayloadPattern = ANY, size: int | _Any = ANY
    ) -> "DatagramExpectation":
        """Expect one datagram; fields left out are don't-care."""
        return DatagramExpectation(self, DatagramPattern(SourcePattern.parse(src), payload, size), 1)

    def datagrams(
        self, *, count: int, src: "str | _Any" = ANY, payload: PayloadPattern = ANY, size: int | _Any = ANY
    ) -> "DatagramExpectation":
        """Expect `count` datagrams matching the same pattern (a burst)."""
        if count < 1:
            raise NetlabError(f"count must be at least 1, not {count!r}")
        return DatagramExpectation(self, DatagramPattern(SourcePattern.parse(src), payload, size), count)

    def count(
        self, *, within: float, src: "str | _Any" = ANY, payload: PayloadPattern = ANY, size: int | _Any = ANY
    ) -> int:
        """How many matching datagrams arrive within `within` seconds from now (always waits that long, as
        counting needs a window); the counted ones are claimed."""
        pattern = DatagramPattern(SourcePattern.parse(src), payload, size)
        self._collect_until(lambda: False, time.monotonic() + within)
        matched = [index for index in self._unclaimed_indexes() if pattern.matches(self.arrived[index])]
        self._claimed.update(matched)
        return len(matched)

    def nothing_else(self, quiet: float = 0.2) -> "Inbox":
        """Nothing beyond what expectations claimed arrives, checked over a `quiet` window from now. A
        datagram an earlier failure showed already is not reported a second time."""
        deadline = time.monotonic() + quiet

        def extra_arrivals() -> list[Arrival]:
            return [self.arrived[i] for i in self._unclaimed_indexes() if i not in self._reported]

        if self._collect_until(lambda: bool(extra_arrivals()), deadline):
            extra = extra_arrivals()
            raise ExpectationError(
                f"expected nothing else at {self.where}, but {len(extra)} more datagram(s) arrived:\n"
                + self._listing(extra)
                + self._footer()
            )
        return self

    def nothing(self, quiet: float = 0.5) -> "Inbox":
        """No datagram at all arrives (nothing expected was claimed either), over `quiet` seconds."""
        return self.nothing_else(quiet)

    def _unclaimed_indexes(self) -> list[int]:
        return [index for index in range(len(self.arrived)) if index not in self._claimed]

    # -- reporting
    def _listing(self, arrivals: list[Arrival], pattern: DatagramPattern | None = None) -> str:
        lines = []
        for number, arrival in enumerate(arrivals[:LISTED], 1):
            line = f"    #{number:<3} +{arrival.time - self.opened:.3f}s  from {arrival.source}"
            if pattern is not None:
                differences = pattern.differences(arrival)
                line += "   <- " + ("; ".join(differences) if differences else "matches")
            lines.append(line)
            lines.append(f"         payload {describe_payload(arrival.payload)}")
        if len(arrivals) > LISTED:
            lines.append(f"    ... and {len(arrivals) - LISTED} more")
        return "\n".join(lines) if lines else "    (nothing)"

    def _footer(self) -> str:
        lab = self.node.lab
        if lab.capture_enabled:
            return f"\ncaptures of every interface: {lab.workdir / 'captures'}"
        return ""

    def _failure(self, expectation: "DatagramExpectation", within: float, matched: int) -> ExpectationError:
        pattern = expectation.pattern
        unclaimed = self.unclaimed()
        source, payload = pattern.describe()
        wanted = "a datagram" if expectation.count == 1 else f"{expectation.count} datagrams"
        lines = [f"expected {wanted} at {self.where} within {within}s; {matched} matched."]
        closest = min(unclaimed, key=lambda arrival: len(pattern.differences(arrival)), default=None)
        if closest is not None:
            number = unclaimed.index(closest) + 1
            width = max(34, len(source) + 2, len(payload) + 2)
            lines.append(f"\n    {'':<9}{'expected':<{width}}closest arrival (#{number})")
            marks = pattern.differences(closest)
            source_mark = "  <- differs" if any(m.startswith("source") for m in marks) else ""
            payload_mark = "  <- differs" if any(m.startswith(("payload", "size")) for m in marks) else ""
            lines.append(f"    {'source':<9}{source:<{width}}{closest.source}{source_mark}")
            shown = describe_payload(closest.payload)
            lines.append(f"    {'payload':<9}{payload:<{width}}{shown}{payload_mark}")
            if isinstance(pattern.payload, bytes):
                lines.extend(f"    {line}" for line in payload_context(pattern.payload, closest.payload))
        else:
            lines.append(f"\n    {'':<9}expected")
            lines.append(f"    {'source':<9}{source}")
            lines.append(f"    {'payload':<9}{payload}")
        lines.append(f"\nwhat arrived and was not accounted for ({len(unclaimed)}):")
        lines.append(self._listing(unclaimed, pattern))
        self._reported.update(self._unclaimed_indexes())
        return ExpectationError("\n".join(lines) + self._footer())


class EchoRecord(Inbox):
    """What arrived at a port the echo server (netlab.programs.echo --record FILE) holds: the same
    expectations as an Inbox, read from the server's record instead of a socket of its own, so an echo
    server and an arrival expectation can share a port."""

    POLL = 0.01  # seconds between looks at the record file (it has no file descriptor to wait on)

    def __init__(self, node: "LabNode", port: int, record: Path) -> None:
        self.node = node
        self.port = port
        self.record = record
        self.where = f"{node.name} udp [::]:{port} (the echo server's record)"
        self.opened = time.monotonic()
        self.arrived = []
        self._claimed = set()
        self._reported = set()
        self._offset = 0

    def _read_available(self) -> None:
        try:
            with self.record.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self._offset += len(complete)
        for line in complete.splitlines():
            entry = json.loads(line)
            if entry["port"] == self.port:
                payload = bytes.fromhex(entry["payload"])
                self.arrived.append(Arrival(_normalize(entry["src"]), entry["sport"], payload, entry["time"]))

    def _wait(self, remaining: float) -> None:
        time.sleep(min(remaining, self.POLL))


@dataclass
class DatagramExpectation:
    """`count` datagrams matching `pattern` are expected at an Inbox."""

    inbox: Inbox
    pattern: DatagramPattern
    count: int
    claimed: list[Arrival] = field(default_factory=list)

    def arrives(self, within: float = 2.0) -> "DatagramExpectation":
        """Wait until the datagram(s) arrived, at most `within` seconds; raise ExpectationError if not."""
        inbox = self.inbox
        matched: list[int] = []

        def enough() -> bool:
            matched[:] = [i for i in inbox._unclaimed_indexes() if self.pattern.matches(inbox.arrived[i])]
            return len(matched) >= self.count

        if not inbox._collect_until(enough, time.monotonic() + within):
            raise inbox._failure(self, within, len(matched))
        chosen = matched[: self.count]
        inbox._claimed.update(chosen)
        self.claimed = [inbox.arrived[index] for index in chosen]
        return self

    arrive = arrives

    def never_arrives(self, within: float = 0.5) -> Inbox:
        """No matching datagram arrives over `within` seconds."""
        inbox = self.inbox
        deadline = time.monotonic() + within

        def seen() -> bool:
            return any(self.pattern.matches(arrival) for arrival in inbox.unclaimed())

        if inbox._collect_until(seen, deadline):
            source, payload = self.pattern.describe()
            raise ExpectationError(
                f"expected no datagram from {source} with payload {payload} at {inbox.where}, but:\n"
                + inbox._listing(inbox.unclaimed(), self.pattern)
                + inbox._footer()
            )
        return inbox

    def and_nothing_else(self, quiet: float = 0.2) -> Inbox:
        """...and nothing else arrives at the same inbox (over a `quiet` window)."""
        return self.inbox.nothing_else(quiet)


def expect(node: "LabNode", port: int, *, address: str | None = None) -> Inbox:
    """Start listening at `port` of `node` (all addresses of both families unless `address` is given).

    Call it before the traffic starts: from that moment every datagram to the port is kept.
    """
    return Inbox(node, port, address)


__all__ = [
    "ANY",
    "Arrival",
    "DatagramExpectation",
    "DatagramPattern",
    "EchoRecord",
    "Inbox",
    "SourcePattern",
    "describe_payload",
    "expect",
    "payload_context",
]
