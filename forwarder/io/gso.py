"""UDP GSO (UDP_SEGMENT): a run of equal-size datagrams of one flow leaves in one sendmsg.

The kernel builds one super-packet and cuts it into separate datagrams (in the NIC, or in software just
before the device), so n datagrams cost one trip through the UDP/IP send path instead of n. A run is
datagrams of one size, the last one possibly shorter (never empty); at most MAX_SEGMENTS of them and at
most a maximal IP datagram in all. Support is probed once with setsockopt, never with the control message
alone: a kernel without GSO ignores an unknown SOL_UDP control message and would send the whole run as
one big datagram. Where a send with GSO fails for a reason of GSO's own (EIO: no checksum offload on the
route's device; EINVAL/EMSGSIZE: segment larger than the path MTU, or too many segments) the run goes out
one datagram at a time, and EIO/ENOPROTOOPT turn GSO off for good. `BatchGso` is what the engine uses
(`--gso`): one sendmsg straight from a BatchSender's iovecs, no Python object per datagram.

Beware: netfilter sees a GSO run as one packet in OUTPUT and POSTROUTING (the segments exist only after
them), so per-datagram rules there (a payload match, a packet counter, `limit`) apply to the run as a
whole, and a firewall drop takes the whole run.
"""

import ctypes
import errno
import socket
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple

from forwarder.io.linux import SOL_UDP, UDP_SEGMENT, IOVec, MsgHdr, libc_function

MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS before Linux 6.9 (128 since); the portable limit
MAX_PAYLOAD = {socket.AF_INET: 65535 - 20 - 8, socket.AF_INET6: 65535 - 40 - 8}
# Errors that mean "this run cannot go out with GSO", not "this datagram is refused".
GSO_ERRORS = frozenset((errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.ENOPROTOOPT))
GSO_GONE = frozenset((errno.EIO, errno.ENOPROTOOPT))


class Run(NamedTuple):
    """Datagrams start..start+length-1 of a sequence, to be sent as one GSO send of `segment` bytes each
    (length 1: a plain send)."""

    start: int
    length: int
    segment: int


def plan_runs(
    lengths: Sequence[int], max_segments: int = MAX_SEGMENTS, max_payload: int = MAX_PAYLOAD[socket.AF_INET]
) -> list[Run]:
    """Cut datagrams of these lengths (in order, all of one flow) into GSO runs: each run is datagrams of
    its first one's length, optionally closed by one shorter, non-empty datagram."""
    runs: list[Run] = []
    index, total = 0, len(lengths)
    while index < total:
        segment = lengths[index]
        count = 1
        if segment > 0:
            limit = min(max_segments, max_payload // segment, total - index)
            while count < limit and lengths[index + count] == segment:
                count += 1
            if count < limit and 0 < lengths[index + count] < segment:
                count += 1  # a shorter datagram may close the run
        runs.append(Run(index, count, segment))
        index += count
    return runs


def probe_gso() -> bool:
    """True when this kernel accepts UDP_SEGMENT (Linux 4.18 and later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
        except OSError:
            return False
    return True


# struct cmsghdr on Linux: size_t cmsg_len, int cmsg_level, int cmsg_type, then the data (here a u16).
_CMSG_HEADER = ctypes.sizeof(ctypes.c_size_t) + 2 * ctypes.sizeof(ctypes.c_int)
_CMSG_LEN = _CMSG_HEADER + 2
_CMSG_SPACE = _CMSG_HEADER + ctypes.sizeof(ctypes.c_size_t)  # the u16 rounded up to the alignment


class BatchGso:
    """One sendmsg with UDP_SEGMENT for a run of received datagrams, through the iovecs a BatchSender
    already points at the receiver's slots: a run costs setting its lengths and one system call.

    `send(fd, first, count, segment)` returns 0 or the errno; the caller falls back
    to sending the run datagram by datagram on any error (so a refused run is counted per datagram)."""

    def __init__(self, sendmsg: Callable[..., int], iovecs: "ctypes.Array[IOVec]") -> None:
        self._sendmsg = sendmsg
        self._iovecs = iovecs
        self._iov_address = ctypes.addressof(iovecs)
        self._header = MsgHdr()
        self._control = ctypes.create_string_buffer(_CMSG_SPACE)
        struct.pack_into("@NiiH", self._control, 0, _CMSG_LEN, SOL_UDP, UDP_SEGMENT, 0)
        self._segment = memoryview(self._control).cast("B")[_CMSG_HEADER : _CMSG_HEADER + 2].cast("H")
        self._header.msg_control = ctypes.addressof(self._control)
        self._header.msg_controllen = _CMSG_SPACE
        self._header_address = ctypes.addressof(self._header)
        self.largest = MAX_PAYLOAD[
            socket.AF_INET6
        ]  # segments above a size that failed with EMSGSIZE skip GSO

    @classmethod
    def create(cls, iovecs: "ctypes.Array[IOVec]") -> "BatchGso | None":
        """The sender, or None when the kernel has no UDP_SEGMENT or libc no sendmsg."""
        if not probe_gso():
            return None
        sendmsg = libc_function("sendmsg", (ctypes.c_int, ctypes.c_void_p, ctypes.c_int), ctypes.c_ssize_t)
        return None if sendmsg is None else cls(sendmsg, iovecs)

    def aim(self, name: int, name_length: int) -> None:
        """Send the following runs to the struct sockaddr at address `name`."""
        self._header.msg_name = name
        self._header.msg_namelen = name_length

    def send(self, fd: int, first: int, count: int, segment: int) -> int:
        """Send iovecs first..first+count-1 (their lengths already set) as one GSO run; 0, or the errno of
        the failed send."""
        header = self._header
        header.msg_iov = self._iov_address + first * ctypes.sizeof(IOVec)
        header.msg_iovlen = count
        self._segment[0] = segment
        if self._sendmsg(fd, self._header_address, 0) >= 0:
            return 0
        error = ctypes.get_errno()
        if error == errno.EMSGSIZE:
            self.largest = min(self.largest, segment - 1)  # beyond the path MTU: plain sends from now on
        elif error in GSO_GONE:
            self.largest = 0  # no segmentation on this route's device: GSO is off from now on
        return error
