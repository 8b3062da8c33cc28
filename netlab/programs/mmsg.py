"""sendmmsg(2) for the load generator: many datagrams in one system call, so the sender is not the
bottleneck of a benchmark. The ctypes structures are the forwarder's own (forwarder.io.batch), written once.
"""

import ctypes
import os
import socket
from collections.abc import Sequence

from forwarder.core.addresses import sockaddr_bytes
from forwarder.io.linux import IOVec, MMsgHdr

from netlab.errors import SystemCallError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
_libc.sendmmsg.restype = ctypes.c_int


def sockaddr_in(address: str, port: int) -> ctypes.Array[ctypes.c_char]:
    """A struct sockaddr_in for `address`:`port`, in a buffer that outlives the call."""
    raw = sockaddr_bytes(socket.AF_INET, (address, port))
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
            header.msg_iov = ctypes.addressof(self._iovecs[index])
            header.msg_iovlen = 1
        self.count = count
        self._address = ctypes.addressof(self.messages)

    def send(self, fd: int, limit: int | None = None) -> int:
        """Send the batch once (its first `limit` datagrams when given); returns how many datagrams the
        kernel took (0 when it would block)."""
        count = self.count if limit is None else max(0, min(limit, self.count))
        sent = _libc.sendmmsg(fd, self._address, count, 0)
        if sent < 0:
            error = ctypes.get_errno()
            if error in (11, 105):  # EAGAIN, ENOBUFS: the queue is full; the caller tries again
                return 0
            raise SystemCallError(error, f"sendmmsg: {os.strerror(error)}")
        return int(sent)
