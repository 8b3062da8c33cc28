"""UDP GRO on a receiving socket (netlab.programs.gro): a GSO run over loopback reaches a GRO socket as one
train with its segment size, which splits back into the datagrams; control messages parsed raw too."""

import socket
import struct

import pytest

from forwarder.io.gso import probe_gso
from forwarder.io.linux import SOL_UDP
from netlab.programs.gro import CONTROL_SPACE, UDP_GRO, enable_gro, segment_size, segment_size_raw, split
from netlab.programs.send_paths import GsoSender


@pytest.mark.skipif(not probe_gso(), reason="this kernel has no UDP_SEGMENT")
def test_a_gso_run_arrives_at_a_gro_socket_as_one_train_that_splits_back() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        assert enable_gro(receiver)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2.0)
        payloads = [bytes([97 + n]) * 50 for n in range(5)] + [b"end"]
        assert GsoSender().send(sender, payloads, receiver.getsockname()) == (6, 0)
        data, ancdata, _flags, _source = receiver.recvmsg(65536, CONTROL_SPACE)
        assert segment_size(ancdata) == 50
        assert [bytes(d) for d in split(memoryview(data), segment_size(ancdata))] == payloads


def test_without_a_control_message_a_buffer_is_one_datagram() -> None:
    assert segment_size([]) == 0
    assert [bytes(d) for d in split(memoryview(b"abcdef"), 0)] == [b"abcdef"]


def test_the_segment_size_is_found_in_a_raw_control_buffer() -> None:
    other = struct.pack("=Qii", 20, 0, 1) + b"\0\0\0\0" + bytes(4)  # an unrelated cmsg, padded to 8
    gro = struct.pack("=Qii", 20, SOL_UDP, UDP_GRO) + struct.pack("=i", 1200) + bytes(4)
    control = other + gro
    assert segment_size_raw(control, len(control)) == 1200
    assert segment_size_raw(other, len(other)) == 0


def test_split_keeps_a_shorter_last_datagram() -> None:
    assert [bytes(d) for d in split(memoryview(b"aaabbbc"), 3)] == [b"aaa", b"bbb", b"c"]
