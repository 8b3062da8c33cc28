"""The Linux ABI the standard library does not wrap: the libc loader (ctypes), struct iovec, msghdr and
mmsghdr, the socket options the socket module lacks, and the error queue's control message. One home for
each, so no constant or loader is written twice.
"""

import ctypes
import functools
import socket
from collections.abc import Callable, Sequence
from typing import Any

from forwarder.core.icmp import EXTENDED_ERROR_SIZE, QueuedError, decode_extended_error

# Socket options and flags the socket module lacks (IP_PKTINFO before Python 3.12).
IP_PKTINFO = 8
IP_RECVERR = 11
IP_TRANSPARENT = 19
# The original destination of a datagram (what a tproxy rule steered to this socket): set the RECV option,
# read the control message of the same number.
IP_RECVORIGDSTADDR = IP_ORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = IPV6_ORIGDSTADDR = 74
IPV6_RECVERR = 25
IPV6_TRANSPARENT = 75
SO_RCVBUFFORCE = 33
SOL_UDP = 17
UDP_SEGMENT = 103
MSG_DONTWAIT = 0x40
MSG_ERRQUEUE = 0x2000
# recvmmsg(int fd, struct mmsghdr *msgvec, unsigned int vlen, int flags, struct timespec *timeout)
RECVMMSG_ARGUMENTS = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
# sendmmsg(int fd, struct mmsghdr *msgvec, unsigned int vlen, int flags)
SENDMMSG_ARGUMENTS = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
# Room for one queued error: the struct, the offender's struct sockaddr_in6, and the cmsg header around them.
CONTROL_SIZE = socket.CMSG_SPACE(EXTENDED_ERROR_SIZE + 28)


class IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint))


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def libc_function(name: str, argtypes: Sequence[Any], restype: Any) -> Callable[..., int] | None:
    """The C library's function `name` with these argument and result types (errno kept for
    ctypes.get_errno), or None when this libc has no such function."""
    libc = _libc()
    function = getattr(libc, name, None) if libc is not None else None
    if function is None:
        return None
    function.argtypes = tuple(argtypes)
    function.restype = restype
    found: Callable[..., int] = function
    return found


def parse_queued_error(ancillary: list[tuple[int, int, bytes]]) -> QueuedError | None:
    """The error in the ancillary data of one MSG_ERRQUEUE read, or None when it carries none."""
    for level, kind, data in ancillary:
        if (level, kind) in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)):
            return decode_extended_error(data)
    return None
