"""`netlab sniff`: the UDP datagrams seen on a node's interfaces, decoded from raw frames.

One AF_PACKET socket made inside the node's namespace sees every interface there, both directions, so it
records from the moment it exists (no tcpdump process to wait for). Only the headers are decoded here:
Ethernet, IPv4 or IPv6 (with a fragment header), UDP. A non-first fragment has no UDP header: it is
reported as a fragment without ports. Datagrams are counted, not packets: a fragmented datagram counts
once, at its last fragment (the one without the more-fragments flag).
"""

import ipaddress
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from netlab.addresses import format_endpoint
from netlab.lab import netns
from netlab.traffic.expect import describe_payload

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
PROTO_UDP, IPV6_FRAGMENT = 17, 44


@dataclass(frozen=True)
class Seen:
    """One UDP datagram (or fragment of one) on an interface of a node."""

    interface: str
    direction: str  # "in" or "out"
    src: str
    dst: str
    sport: int | None
    dport: int | None
    size: int | None  # the UDP payload length the header announces (the whole datagram, when fragmented)
    fragment: bool
    payload: bytes
    time: float
    more_fragments: bool = False  # a fragment that is not the datagram's last: not counted as a datagram

    def line(self) -> str:
        """One human-readable line."""
        if self.sport is None:
            return f"{self.interface:<12} {self.direction:<3} {self.src} > {self.dst} udp fragment"
        frag = " (first fragment)" if self.fragment else ""
        return (
            f"{self.interface:<12} {self.direction:<3} {format_endpoint(self.src, self.sport)} > "
            f"{format_endpoint(self.dst, self.dport or 0)} udp {self.size} bytes{frag} "
            f"{describe_payload(self.payload)}"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["payload"] = self.payload.hex()
        return data


def decode(frame: bytes, interface: str, direction: str, now: float) -> Seen | None:
    """The UDP datagram in an Ethernet frame, or None for anything else."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    packet = frame[14:]
    fragment = False
    if ethertype == ETHERTYPE_IPV4 and len(packet) >= 20:
        header = (packet[0] & 0x0F) * 4
        if packet[9] != PROTO_UDP:
            return None
        flags_offset = struct.unpack_from("!H", packet, 6)[0]
        fragment = bool(flags_offset & 0x3FFF)
        first = flags_offset & 0x1FFF == 0
        more = bool(flags_offset & 0x2000)
        src, dst = str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20]))
        udp = packet[header:]
    elif ethertype == ETHERTYPE_IPV6 and len(packet) >= 40:
        src, dst = str(ipaddress.IPv6Address(packet[8:24])), str(ipaddress.IPv6Address(packet[24:40]))
        following, udp, first, more = packet[6], packet[40:], True, False
        if following == IPV6_FRAGMENT and len(udp) >= 8:
            fragment = True
            offset_flags = struct.unpack_from("!H", udp, 2)[0]
            first, more = offset_flags & 0xFFF8 == 0, bool(offset_flags & 1)
            following, udp = udp[0], udp[8:]
        if following != PROTO_UDP:
            return None
    else:
        return None
    if not first:
        return Seen(interface, direction, src, dst, None, None, None, True, b"", now, more)
    if len(udp) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", udp)
    return Seen(interface, direction, src, dst, sport, dport, length - 8, fragment, bytes(udp[8:]), now, more)


class Sniffer:
    """Records UDP on every interface of a namespace (except lo) from the moment it is made."""

    def __init__(self, namespace: str) -> None:
        self.sock = netns.socket_in(namespace, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Sniffer":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def datagrams(self, count: int | None = None, timeout: float | None = None) -> Iterator[Seen]:
        """Yield every packet seen (fragments too) until `count` whole datagrams were seen (a fragmented
        one counts at its last fragment) or `timeout` seconds passed (or ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        counted = 0
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            while count is None or counted < count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                if not selector.select(remaining):
                    continue
                frame, address = self.sock.recvfrom(65600)
                interface, _, packet_type = address[0], address[1], address[2]
                if interface == "lo":
                    continue
                direction = "out" if packet_type == PACKET_OUTGOING else "in"
                seen = decode(frame, interface, direction, time.time())
                if seen is not None:
                    counted += not seen.more_fragments
                    yield seen


__all__ = ["Seen", "Sniffer", "decode"]
