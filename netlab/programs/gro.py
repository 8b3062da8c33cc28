"""UDP GRO (UDP_GRO) on a listening socket: a train of same-size datagrams of one flow, coalesced by the
kernel on receive, arrives as one buffer plus its segment size in a control message.

Such a train is exactly what forwarder.io.gso can send on as one GSO send, so a run costs one receive and
one send. The kernel only builds trains where the receive path runs GRO over several packets at once (a
NIC's NAPI poll; a veth with GRO on, whose sender's packets are eligible, and threaded NAPI) and only of
datagrams with a UDP checksum (RFC 768's zero checksum never coalesces). Without a control message, the
buffer is one datagram. Not wired into the engine yet.
"""

import socket
import struct

from forwarder.io.linux import SOL_UDP

UDP_GRO = 104
CONTROL_SPACE = socket.CMSG_SPACE(4)  # room for the segment size (an int) per received buffer
_CMSG_HEADER = struct.Struct("=Qii")  # struct cmsghdr on 64-bit Linux: cmsg_len, cmsg_level, cmsg_type


def enable_gro(sock: socket.socket) -> bool:
    """Ask for coalesced trains on `sock`; False where the kernel lacks UDP_GRO (before Linux 5.0)."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The segment size of a buffer from the ancillary data recvmsg returned; 0 when it is one datagram."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 2:
            return int.from_bytes(data[:4] if len(data) >= 4 else data[:2], "little")
    return 0


def segment_size_raw(control: bytes | memoryview, length: int) -> int:
    """The same from a raw control buffer of `length` bytes (as recvmmsg fills msg_control)."""
    offset = 0
    while offset + _CMSG_HEADER.size <= length:
        cmsg_len, level, kind = _CMSG_HEADER.unpack_from(control, offset)
        if cmsg_len < _CMSG_HEADER.size:
            break
        if level == SOL_UDP and kind == UDP_GRO and cmsg_len >= _CMSG_HEADER.size + 4:
            return int.from_bytes(
                control[offset + _CMSG_HEADER.size : offset + _CMSG_HEADER.size + 4], "little"
            )
        offset += (cmsg_len + 7) & ~7
    return 0


def split(train: memoryview, segment: int) -> list[memoryview]:
    """The datagrams of a received buffer: `segment` bytes each, the last one possibly shorter."""
    if segment <= 0 or len(train) <= segment:
        return [train]
    return [train[start : start + segment] for start in range(0, len(train), segment)]
