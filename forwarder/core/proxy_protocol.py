"""The PROXY protocol version 2 header, as it prefixes a datagram: parsing (no I/O, never raises) and
building. Version 1 is text over TCP only; over UDP every datagram carries its own binary header.

Design rule: `parse` believes nothing it has not checked. It returns a ProxyHeader only for a header that
is whole and well formed (signature, version 2, a known command, family and transport, an address block
that fits the declared length, TLVs that add up to it exactly, a CRC32C that matches when one is sent);
anything else is a HeaderProblem naming what was wrong, which the forwarder counts as a drop reason.
"""

import enum
import ipaddress
import socket
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from forwarder.core.addresses import decode_sockaddr, family_of, plain_address
from forwarder.core.flows import bounded_put

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_LENGTH = 16  # signature, version and command, family and transport, length
VERSION = 2
ADDRESS_LENGTH = {1: 12, 2: 36, 3: 216}  # INET, INET6, UNIX: both addresses and, for IP, both ports
TLV_CRC32C = 0x03
TLV_NOOP = 0x04
TRUST_CACHE_SIZE = 4096
# What a header kept in a HeaderCache is charged besides its bytes: the dict slot, the key object and the
# decision kept with it, roughly.
ENTRY_OVERHEAD = 256

V = TypeVar("V")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SourceAddress = tuple[str, int]


class Command(enum.IntEnum):
    """The low nibble of byte 13."""

    LOCAL = 0x0  # sent by the proxy on its own behalf (a health check): no client behind it
    PROXY = 0x1  # relayed for the client named in the address block


class HeaderProblem(enum.Enum):
    """Why a datagram from a trusted source was not believed; the value is the drop reason's word."""

    MISSING = "proxy-header-missing"
    TRUNCATED = "proxy-header-truncated"
    VERSION = "proxy-header-version"
    COMMAND = "proxy-header-command"
    FAMILY = "proxy-header-family"
    LENGTH = "proxy-header-length"
    TRANSPORT = "proxy-header-transport"
    TLV = "proxy-header-tlv"
    CHECKSUM = "proxy-header-checksum"
    CHECKSUM_BUDGET = "proxy-header-checksum-budget"


# The PROXY headers remembered (--proxy-protocol-from), in bytes: thousands of a load balancer's ordinary
# headers, or 64 of the largest a header can be.
HEADER_CACHE_BYTES = 4 << 20
# Header problems not worth a cache entry: found before the whole header is known (nor is the key whole),
# or a verdict that time changes (a spent checksum budget: the same header is checked once it refills).
CHEAP_PROBLEMS = (HeaderProblem.MISSING, HeaderProblem.TRUNCATED, HeaderProblem.CHECKSUM_BUDGET)
# The header bytes CRC32C may be summed over per second, and at once: summing in Python costs about 0.15 s
# per MiB, so distinct large headers with a checksum (a trusted sender's, or someone's spoofing its
# address) can take at most about a sixth of the loop; a load balancer's ordinary headers (tens of bytes,
# each remembered once checked) fit tens of thousands of new clients a second.
CHECKSUM_BYTES_PER_SECOND = 1 << 20
CHECKSUM_BURST = 1 << 20


class ChecksumBudget:
    """A token bucket of header bytes the CRC32C may be summed over, refilled with time (`now`, seconds)."""

    def __init__(self, per_second: float = CHECKSUM_BYTES_PER_SECOND, burst: float = CHECKSUM_BURST) -> None:
        self.per_second = per_second
        self.burst = burst
        self._left = burst
        self._at: float | None = None

    def take(self, size: int, now: float) -> bool:
        """Spend `size` bytes at `now` if that many are left; False (nothing spent) otherwise."""
        if self._at is not None and now > self._at:
            self._left = min(self.burst, self._left + (now - self._at) * self.per_second)
        self._at = now if self._at is None else max(self._at, now)
        if size > self._left:
            return False
        self._left -= size
        return True


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A header that was checked whole. `length` bytes of the datagram belong to it; the payload follows.

    For PROXY, `source` is the client and `destination` the address the client sent to; for LOCAL both
    are None (the datagram's real endpoints are meant)."""

    command: Command
    length: int
    family: socket.AddressFamily | None = None
    source: SourceAddress | None = None
    destination: SourceAddress | None = None


def parse(
    data: bytes | bytearray | memoryview, budget: ChecksumBudget | None = None, now: float = 0.0
) -> ProxyHeader | HeaderProblem:
    """The PROXY v2 header at the start of `data`, or the problem that makes it unbelievable. With a
    `budget`, a CRC32C is summed only while it has bytes left at `now` (CHECKSUM_BUDGET otherwise)."""
    view = memoryview(data)
    if len(view) < FIXED_LENGTH:
        prefix = bytes(view[: len(SIGNATURE)])
        return HeaderProblem.TRUNCATED if prefix and SIGNATURE.startswith(prefix) else HeaderProblem.MISSING
    if view[:12] != SIGNATURE:
        return HeaderProblem.MISSING
    version, command = view[12] >> 4, view[12] & 0x0F
    family, transport = view[13] >> 4, view[13] & 0x0F
    declared = int.from_bytes(view[14:16], "big")
    total = FIXED_LENGTH + declared
    if version != VERSION:
        return HeaderProblem.VERSION
    if command not in (Command.LOCAL, Command.PROXY):
        return HeaderProblem.COMMAND
    if len(view) < total:
        return HeaderProblem.TRUNCATED
    if command == Command.LOCAL:
        # The receiver uses the datagram's real endpoints and discards the block whatever it says.
        return ProxyHeader(Command.LOCAL, total)
    if family not in ADDRESS_LENGTH or family == 3:  # UNSPEC or UNIX: no client address to present
        return HeaderProblem.FAMILY
    if transport != 2:  # DGRAM; STREAM describes a TCP connection, not this datagram
        return HeaderProblem.TRANSPORT
    address_length = ADDRESS_LENGTH[family]
    if declared < address_length:
        return HeaderProblem.LENGTH
    problem = check_tlvs(view, FIXED_LENGTH + address_length, total, budget, now)
    if problem is not None:
        return problem
    block = view[FIXED_LENGTH : FIXED_LENGTH + address_length]
    if family == 1:
        af, size = socket.AF_INET, 4
    else:
        af, size = socket.AF_INET6, 16
    source_port, destination_port = struct.unpack_from("!HH", block, 2 * size)
    source = (socket.inet_ntop(af, block[:size]), source_port)
    destination = (socket.inet_ntop(af, block[size : 2 * size]), destination_port)
    return ProxyHeader(Command.PROXY, total, af, source, destination)


def check_tlvs(
    view: memoryview, start: int, end: int, budget: ChecksumBudget | None = None, now: float = 0.0
) -> HeaderProblem | None:
    """None when the TLVs in view[start:end] fill it exactly (and a CRC32C TLV, if any, matches).

    The walk costs a few integer operations per TLV (on one copy of the header: indexing bytes is cheaper
    than a memoryview), and the checksum, the one costly step, runs at most once per header over at most
    its 64 KiB: a second CRC32C TLV is refused (it can only repeat the first, or contradict it) before
    anything is summed; with a `budget`, only while it has the header's bytes left."""
    header = bytes(view[:end])
    offset = start
    checksum_at = -1
    while offset < end:
        if offset + 3 > end:
            return HeaderProblem.TLV
        kind = header[offset]
        value_start = offset + 3
        offset = value_start + (header[offset + 1] << 8 | header[offset + 2])
        if offset > end:
            return HeaderProblem.TLV
        if kind == TLV_CRC32C:
            if offset - value_start != 4 or checksum_at >= 0:
                return HeaderProblem.TLV
            checksum_at = value_start
    if checksum_at >= 0:
        if budget is not None and not budget.take(end, now):
            return HeaderProblem.CHECKSUM_BUDGET
        sent = int.from_bytes(header[checksum_at : checksum_at + 4], "big")
        zeroed = header[:checksum_at] + bytes(4) + header[checksum_at + 4 :]  # summed with the field zeroed
        if crc32c(zeroed) != sent:
            return HeaderProblem.CHECKSUM
    return None


def build(source: SourceAddress, destination: SourceAddress) -> bytes:
    """The header a datagram from `source` (the client) to `destination` (the address it sent to) gets.

    Both must be of one family, as plain IPv4 or IPv6 text (a v4-mapped client is presented as IPv4 by
    the caller): a ValueError names the pair otherwise."""
    families = {family_of(source[0]), family_of(destination[0])}
    if len(families) != 1:
        raise ValueError(f"source {source!r} and destination {destination!r} must be of one address family")
    family = families.pop()
    packed = socket.inet_pton(family, source[0]) + socket.inet_pton(family, destination[0])
    block = packed + struct.pack("!HH", source[1], destination[1])
    code = 0x12 if family == socket.AF_INET else 0x22  # family INET/INET6, transport DGRAM
    return SIGNATURE + bytes((0x20 | Command.PROXY, code)) + len(block).to_bytes(2, "big") + block


def build_local() -> bytes:
    """A LOCAL header (no client behind it), as a load balancer's health check sends."""
    return SIGNATURE + bytes((0x20 | Command.LOCAL, 0x00)) + bytes(2)


def _crc32c_tables() -> tuple[tuple[int, ...], ...]:
    """The 8 tables of slicing-by-8: table k maps a byte to its CRC contribution when k zero bytes follow."""
    first = []
    for index in range(256):
        value = index
        for _ in range(8):
            value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
        first.append(value)
    tables = [tuple(first)]
    for _ in range(7):
        previous = tables[-1]
        tables.append(tuple((value >> 8) ^ first[value & 0xFF] for value in previous))
    return tuple(tables)


_CRC32C = _crc32c_tables()
_EIGHT_BYTES = struct.Struct("<II")


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli), the checksum of the PP2_TYPE_CRC32C TLV. The stdlib has only zlib's CRC-32,
    so it is hand-written, slicing-by-8: eight bytes per step of the Python loop, which costs far more
    than the table lookups (1.4 to 1.5 times as fast as a byte per step: 64 KiB in 7 to 10 ms)."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _CRC32C
    value = 0xFFFFFFFF
    view = memoryview(data).cast("B")
    whole = len(view) - len(view) % 8
    for first, high in _EIGHT_BYTES.iter_unpack(view[:whole]):
        low = first ^ value
        value = (
            t7[low & 0xFF]
            ^ t6[(low >> 8) & 0xFF]
            ^ t5[(low >> 16) & 0xFF]
            ^ t4[low >> 24]
            ^ t3[high & 0xFF]
            ^ t2[(high >> 8) & 0xFF]
            ^ t1[(high >> 16) & 0xFF]
            ^ t0[high >> 24]
        )
    for byte in view[whole:]:
        value = t0[(value ^ byte) & 0xFF] ^ (value >> 8)
    return value ^ 0xFFFFFFFF


def plain_network(network: Network) -> Network:
    """`network` as the senders it matches are compared: a v4-mapped one (::ffff:198.51.100.20/128, a
    prefix of 96 or more) as the IPv4 network it maps (198.51.100.20/32), as a v4-mapped sender is
    compared as IPv4; any other unchanged."""
    if network.version == 6 and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class TrustedSources:
    """Answers "are headers from this sender believed?" for a raw sockaddr, from a bounded cache: the
    sender's address (a v4-mapped one as IPv4) is in one of `networks` (--proxy-protocol-from; a v4-mapped
    one as IPv4 too). The first datagram of a sender costs an address check; the next ones one dict
    lookup."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(plain_network(network) for network in networks)
        self._answers: dict[bytes, bool] = {}

    def __call__(self, client: bytes) -> bool:
        answer = self._answers.get(client)
        if answer is None:
            address = plain_address(str(decode_sockaddr(client)[0]))
            answer = any(address in network for network in self.networks)
            bounded_put(self._answers, client, answer, TRUST_CACHE_SIZE)
        return answer


class HeaderCache(Generic[V]):
    """Headers seen recently (their exact bytes) and what was decided about each, bounded in bytes, not
    entries: a load balancer repeats one header for every datagram of a client, but a trusted sender can
    also send thousands of distinct 64 KiB headers, and a cache of 4096 of those held 270 MB. The oldest
    entries leave first; a header larger than the whole budget is never kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0  # charged for the entries kept: their lengths plus ENTRY_OVERHEAD each
        self._entries: OrderedDict[bytes, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, header: bytes) -> V | None:
        """What was decided about `header`, if it is still kept."""
        return self._entries.get(header)

    def put(self, header: bytes, value: V) -> None:
        """Keep `value` for `header`, letting the oldest entries go until it fits."""
        cost = len(header) + ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        entries = self._entries
        old = entries.pop(header, None)
        if old is not None:
            self.bytes -= cost
        while entries and self.bytes + cost > self.max_bytes:
            gone, _ = entries.popitem(last=False)
            self.bytes -= len(gone) + ENTRY_OVERHEAD
        entries[header] = value
        self.bytes += cost

    def clear(self) -> None:
        """Forget every header (the answers they were judged with changed)."""
        self._entries.clear()
        self.bytes = 0
