"""Crafting and sending: spoofed IPv4/IPv6 sources from any node, every payload size, fragments, bursts.

client 198.51.100.10 / 2001:db8:51::10 --- host 198.51.100.1 / 2001:db8:51::1   (dual-stack.toml)
"""

import struct

import pytest

from netlab import Lab
from netlab.errors import PacketError
from netlab.lab.capture import read_pcap
from netlab.programs.crafted import Crafted
from netlab.topology.shipped import dual_stack
from netlab.traffic.expect import expect
from netlab.traffic.payload import make_payload

pytestmark = pytest.mark.privileged

TARGETS = {4: ("203.0.113.7", "198.51.100.1"), 6: ("2001:db8:113::7", "2001:db8:51::1")}


def fragments_seen(lab: Lab, version: int) -> int:
    """IPv4 packets with MF or an offset, or IPv6 packets with a fragment header, on host/to-client."""
    lab.captures.close()
    count = 0
    for frame in read_pcap(lab.workdir / "captures" / "host-to-client.pcap"):
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if version == 4 and ethertype == 0x0800:
            flags_offset = struct.unpack_from("!H", frame, 14 + 6)[0]
            count += bool(flags_offset & 0x3FFF)
        elif version == 6 and ethertype == 0x86DD:
            count += frame[14 + 6] == 44  # next header: fragment
    return count


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("size", [0, 1, 1472, 8000, 65507])
def test_scapy_sends_a_spoofed_datagram_of_any_size(lab: Lab, version: int, size: int) -> None:
    lab.build(dual_stack())
    source, destination = TARGETS[version]
    inbox = expect(lab["host"], port=27000)

    lab["client"].send_udp(src=source, dst=destination, sport=4242, dport=27000, size=size)

    expected_source = f"[{source}]:4242" if version == 6 else f"{source}:4242"
    inbox.datagram(src=expected_source, payload=make_payload(size)).arrives(within=5).and_nothing_else()
    largest_unfragmented = 1500 - (20 if version == 4 else 40) - 8  # MTU - IP header - UDP header
    assert (fragments_seen(lab, version) > 0) is (size > largest_unfragmented)


@pytest.mark.parametrize("version", [4, 6])
def test_a_small_datagram_is_fragmented_when_asked(lab: Lab, version: int) -> None:
    lab.build(dual_stack())
    source, destination = TARGETS[version]
    inbox = expect(lab["host"], port=27000)

    lab["client"].send_udp(src=source, dst=destination, sport=1, dport=27000, size=600, fragment_size=256)

    inbox.datagram(payload=make_payload(600)).arrives(within=5)
    assert fragments_seen(lab, version) >= 3


def test_a_burst_of_different_datagrams_arrives_in_order(lab: Lab) -> None:
    lab.build(dual_stack())
    inbox = expect(lab["host"], port=27000)
    burst = [Crafted(f"203.0.113.{n}", "198.51.100.1", 1000 + n, 27000, bytes([n]), count=5) for n in (1, 2)]

    lab["client"].send_crafted(burst)

    inbox.datagrams(count=5, src="203.0.113.1:1001", payload=b"\x01").arrive(within=5)
    inbox.datagrams(count=5, src="203.0.113.2:1002", payload=b"\x02").arrive(within=5).and_nothing_else()
    assert [arrival.src for arrival in inbox.arrived] == ["203.0.113.1"] * 5 + ["203.0.113.2"] * 5


@pytest.mark.parametrize("version", [4, 6])
def test_the_fast_sender_spoofs_its_source_without_scapy(lab: Lab, version: int) -> None:
    lab.build(dual_stack())
    source, destination = TARGETS[version]
    inbox = expect(lab["host"], port=27000)

    sent = lab["client"].send_fast(
        src=source, sport=4000, dst=destination, dport=27000, payloads=[b"a", b"b"], count=100
    )

    assert sent == 200
    inbox.datagrams(count=200, src=f"{source}/128" if version == 6 else source).arrive(
        within=5
    ).and_nothing_else()


def test_a_payload_too_large_for_udp_is_refused_naming_its_size(lab: Lab) -> None:
    lab.build(dual_stack())
    with pytest.raises(PacketError, match="size 65508: a UDP payload over IPv4 is 0 to 65507 bytes"):
        lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=1, dport=2, size=65508)
    with pytest.raises(PacketError, match="size 65528: a UDP payload over IPv6 is 0 to 65527 bytes"):
        lab["client"].send_udp(
            src="2001:db8:51::10", dst="2001:db8:51::1", sport=1, dport=2, payload=bytes(65528)
        )
