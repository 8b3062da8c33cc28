"""sendmmsg(2) through ctypes: many datagrams in one system call, for a sender that must not be the
bottleneck of a benchmark. Hand-written because the standard library has no sendmmsg and no well-kept
package offers it; the structures are the stable Linux ABI (struct mmsghdr, struct msghdr, struct iovec).
"""

import ctypes
import os
import socket
from collections.abc import Sequence

_libc = ctypes.CDLL(None, use_errno=True)


class IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(IOVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint))


_libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int)
_libc.sendmmsg.restype = ctypes.c_int


def sockaddr_in(address: str, port: int) -> ctypes.Array[ctypes.c_char]:
    """A struct sockaddr_in for `address`:`port`."""
    raw = (
        socket.AF_INET.to_bytes(2, "little") + port.to_bytes(2, "big") + socket.inet_aton(address) + bytes(8)
    )
    return ctypes.create_string_buffer(raw, len(raw))


class Batch:
    """A fixed set of datagrams to one destination, sent again and again with sendmmsg."""

    def __init__(self, datagrams: Sequence[bytes], destination: ctypes.Array[ctypes.c_char]) -> None:
        count = len(datagrams)
        self._buffers = [ctypes.create_string_buffer(data, len(data)) for data in datagrams]
        self._iovecs = (IOVec * count)()
        self.messages = (MMsgHdr * count)()
        self._destination = destination
        for index, buffer in enumerate(self._buffers):
            self._iovecs[index].iov_base = ctypes.addressof(buffer)
            self._iovecs[index].iov_len = len(datagrams[index])
            header = self.messages[index].msg_hdr
            header.msg_name = ctypes.addressof(destination)
            header.msg_namelen = len(destination)
            header.msg_iov = ctypes.pointer(self._iovecs[index])
            header.msg_iovlen = 1
        self.count = count

    def send(self, fd: int, limit: int | None = None) -> int:
        """Send the batch once (its first `limit` datagrams when given); returns how many datagrams the
        kernel took (0 when it would block)."""
        count = self.count if limit is None else max(0, min(limit, self.count))
        sent = _libc.sendmmsg(fd, self.messages, count, 0)
        if sent < 0:
            error = ctypes.get_errno()
            if error in (11, 105):  # EAGAIN, ENOBUFS: the queue is full; the caller tries again
                return 0
            raise OSError(error, os.strerror(error))
        return int(sent)
