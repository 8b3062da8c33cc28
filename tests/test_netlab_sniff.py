"""`netlab sniff` decodes UDP from raw Ethernet frames: IPv4, IPv6, and fragments of either."""

import ipaddress
import struct

from netlab.traffic.sniff import decode


def ipv4_frame(
    payload: bytes, *, flags_offset: int = 0, udp: bool = True, length: int | None = None
) -> bytes:
    body = struct.pack("!HHHH", 4242, 27000, 8 + (len(payload) if length is None else length), 0) + payload
    if not udp:
        body = payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, flags_offset, 64, 17, 0,
        ipaddress.IPv4Address("203.0.113.7").packed, ipaddress.IPv4Address("192.0.2.2").packed,
    )  # fmt: skip
    return b"\x00" * 12 + b"\x08\x00" + header + body


def ipv6_frame(payload: bytes, fragment_offset: int | None = None) -> bytes:
    udp = struct.pack("!HHHH", 4242, 27000, 8 + len(payload), 0) + payload
    following = 17
    if fragment_offset is not None:
        udp = struct.pack("!BBHI", 17, 0, fragment_offset << 3 | 1, 7) + (
            udp if fragment_offset == 0 else payload
        )
        following = 44
    header = struct.pack("!IHBB", 6 << 28, len(udp), following, 64)
    header += ipaddress.IPv6Address("2001:db8:113::7").packed + ipaddress.IPv6Address("2001:db8:2::2").packed
    return b"\x00" * 12 + b"\x86\xdd" + header + udp


def test_an_ipv4_datagram_is_decoded_with_addresses_ports_and_payload() -> None:
    seen = decode(ipv4_frame(b"hello"), "to-host", "in", 1.0)
    assert seen is not None
    assert (seen.src, seen.sport, seen.dst, seen.dport, seen.size, seen.payload) == (
        "203.0.113.7", 4242, "192.0.2.2", 27000, 5, b"hello",
    )  # fmt: skip
    assert not seen.fragment
    assert seen.line().startswith("to-host      in  203.0.113.7:4242 > 192.0.2.2:27000 udp 5 bytes")


def test_the_first_ipv4_fragment_announces_the_whole_datagrams_size() -> None:
    seen = decode(ipv4_frame(b"x" * 16, flags_offset=0x2000, length=65507), "eth0", "in", 1.0)
    assert seen is not None
    assert (seen.fragment, seen.size, seen.sport) == (True, 65507, 4242)


def test_a_later_ipv4_fragment_has_no_ports() -> None:
    seen = decode(ipv4_frame(b"x" * 16, flags_offset=185, udp=False), "eth0", "in", 1.0)
    assert seen is not None
    assert (seen.fragment, seen.sport, seen.size) == (True, None, None)
    assert seen.line().endswith("udp fragment")


def test_an_ipv6_datagram_and_its_fragments_are_decoded() -> None:
    plain = decode(ipv6_frame(b"v6"), "eth0", "out", 1.0)
    assert plain is not None
    assert (plain.src, plain.dport, plain.payload, plain.direction) == (
        "2001:db8:113::7",
        27000,
        b"v6",
        "out",
    )
    first = decode(ipv6_frame(b"v6", fragment_offset=0), "eth0", "in", 1.0)
    assert first is not None
    assert (first.fragment, first.sport) == (True, 4242)
    later = decode(ipv6_frame(b"v6", fragment_offset=100), "eth0", "in", 1.0)
    assert later is not None
    assert (later.fragment, later.sport) == (True, None)


def test_frames_that_are_not_udp_are_ignored() -> None:
    tcp = bytearray(ipv4_frame(b"hello"))
    tcp[14 + 9] = 6
    assert decode(bytes(tcp), "eth0", "in", 1.0) is None
    assert decode(b"\x00" * 12 + b"\x08\x06" + b"\x00" * 28, "eth0", "in", 1.0) is None  # ARP


def test_only_the_last_fragment_of_a_datagram_closes_it() -> None:
    first = decode(ipv4_frame(b"x" * 16, flags_offset=0x2000, length=3000), "eth0", "in", 1.0)
    middle = decode(ipv4_frame(b"x" * 16, flags_offset=0x2000 | 185, udp=False), "eth0", "in", 1.0)
    last = decode(ipv4_frame(b"x" * 16, flags_offset=370, udp=False), "eth0", "in", 1.0)
    whole = decode(ipv4_frame(b"hello"), "eth0", "in", 1.0)
    assert first is not None
    assert middle is not None
    assert last is not None
    assert whole is not None
    assert [seen.more_fragments for seen in (first, middle, last, whole)] == [True, True, False, False]
    assert [seen.fragment for seen in (first, middle, last, whole)] == [True, True, True, False]


def test_an_ipv6_fragment_header_says_whether_more_fragments_follow() -> None:
    more = decode(ipv6_frame(b"v6", fragment_offset=0), "eth0", "in", 1.0)
    assert more is not None
    assert more.more_fragments
    frame = bytearray(ipv6_frame(b"v6", fragment_offset=100))
    frame[14 + 40 + 3] &= 0xFE  # clear the M flag: the last fragment
    last = decode(bytes(frame), "eth0", "in", 1.0)
    assert last is not None
    assert not last.more_fragments
