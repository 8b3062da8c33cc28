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
from collections.abc import Iterable
from dataclasses import dataclass

from forwarder.core import bounded_put, decode_sockaddr, plain_address

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
FIXED_LENGTH = 16  # signature, version and command, family and transport, length
VERSION = 2
ADDRESS_LENGTH = {1: 12, 2: 36, 3: 216}  # INET, INET6, UNIX: both addresses and, for IP, both ports
TLV_CRC32C = 0x03
TLV_NOOP = 0x04
TRUST_CACHE_SIZE = 4096

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


def parse(data: bytes | bytearray | memoryview) -> ProxyHeader | HeaderProblem:
    """The PROXY v2 header at the start of `data`, or the problem that makes it unbelievable."""
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
    problem = check_tlvs(view, FIXED_LENGTH + address_length, total)
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


def check_tlvs(view: memoryview, start: int, end: int) -> HeaderProblem | None:
    """None when the TLVs in view[start:end] fill it exactly (and a CRC32C TLV, if any, matches)."""
    offset = start
    while offset < end:
        if end - offset < 3:
            return HeaderProblem.TLV
        kind = view[offset]
        length = int.from_bytes(view[offset + 1 : offset + 3], "big")
        value_start = offset + 3
        if value_start + length > end:
            return HeaderProblem.TLV
        if kind == TLV_CRC32C:
            if length != 4:
                return HeaderProblem.TLV
            sent = int.from_bytes(view[value_start : value_start + 4], "big")
            header = bytearray(view[:end])
            header[value_start : value_start + 4] = bytes(4)  # computed with the field zeroed
            if crc32c(header) != sent:
                return HeaderProblem.CHECKSUM
        offset = value_start + length
    return None


def build(source: SourceAddress, destination: SourceAddress) -> bytes:
    """The header a datagram from `source` (the client) to `destination` (the address it sent to) gets.

    Both must be of one family, as plain IPv4 or IPv6 text (a v4-mapped client is presented as IPv4 by
    the caller): a ValueError names the pair otherwise."""
    families = {_family_of(source[0]), _family_of(destination[0])}
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


def _family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for index in range(256):
        value = index
        for _ in range(8):
            value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
        table.append(value)
    return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes | bytearray) -> int:
    """CRC-32C (Castagnoli), the checksum of the PP2_TYPE_CRC32C TLV; the stdlib has only zlib's CRC-32,
    so it is hand-written (headers are short and rarely carry it)."""
    value = 0xFFFFFFFF
    table = _CRC32C
    for byte in data:
        value = table[(value ^ byte) & 0xFF] ^ (value >> 8)
    return value ^ 0xFFFFFFFF


class TrustedSources:
    """Answers "are headers from this sender believed?" for a raw sockaddr, from a bounded cache: the
    sender's address (a v4-mapped one as IPv4) is in one of `networks` (--proxy-protocol-from). The first
    datagram of a sender costs an address check; the next ones one dict lookup."""

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self._answers: dict[bytes, bool] = {}

    def __call__(self, client: bytes) -> bool:
        answer = self._answers.get(client)
        if answer is None:
            address = plain_address(str(decode_sockaddr(client)[0]))
            answer = any(address in network for network in self.networks)
            bounded_put(self._answers, client, answer, TRUST_CACHE_SIZE)
        return answer
