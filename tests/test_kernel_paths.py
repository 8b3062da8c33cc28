"""The arithmetic of netlab.bench.kernel_paths: datagrams behind a counter's packets and bytes, whether the
packets are ordinary ones or GSO super-packets; and the blaster's UDP checksum, which GRO requires."""

import socket
import struct

from netlab.bench.kernel_paths import delivered_datagrams
from netlab.programs.blaster import internet_checksum, udp_packet


def test_ordinary_packets_count_one_datagram_each() -> None:
    assert delivered_datagrams(10, 10 * (28 + 64), 64) == 10


def test_a_super_packet_counts_every_segment_it_carries() -> None:
    assert delivered_datagrams(2, 2 * 28 + 128 * 64, 64) == 128


def test_the_blaster_checksum_verifies_as_a_receiver_checks_it() -> None:
    packet = udp_packet("198.51.100.10", "198.51.100.1", 10000, 27000, b"payload!")
    udp = packet[20:]
    assert struct.unpack("!H", udp[6:8])[0] != 0
    pseudo = (
        socket.inet_aton("198.51.100.10")
        + socket.inet_aton("198.51.100.1")
        + struct.pack("!BBH", 0, 17, len(udp))
    )
    assert internet_checksum(pseudo + udp) == 0  # the sum over a correct datagram is all ones
