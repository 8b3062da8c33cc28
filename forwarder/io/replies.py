"""The backend's replies in batches (relay mode): recvmmsg on each ready flow socket into one arena, then
every reply gathered in a pass leaves with one sendmmsg per listening socket, each message with its own
client address and, where the listener needs it, its own IP_PKTINFO / IPV6_PKTINFO source.

A reply used to cost a wake-up, an error-queue read, a recvmsg (and one more that found the queue empty)
and a sendmsg; a pass over n ready flow sockets now costs n recvmmsg and one sendmmsg per listener. The
structures are forwarder.batch's (the stable Linux ABI through ctypes, the standard library only); where
libc lacks recvmmsg or sendmmsg, `ReplyBatch.create()` returns None and the engine relays one at a time.
"""

import ctypes
import errno
import os
import socket
import struct
from collections.abc import Callable

from forwarder.io.batch import BATCH, NAME_SPACE
from forwarder.io.linux import (
    IP_PKTINFO,
    MSG_DONTWAIT,
    RECVMMSG_ARGUMENTS,
    SENDMMSG_ARGUMENTS,
    IOVec,
    MMsgHdr,
    MsgHdr,
    libc_function,
)

# Room for one control message choosing a reply's source: CMSG_SPACE of struct in6_pktinfo (20 bytes),
# the larger of the two.
CONTROL_SPACE = socket.CMSG_SPACE(20)
_CMSG_HEADER = struct.Struct("@Nii")  # struct cmsghdr: size_t cmsg_len, int cmsg_level, int cmsg_type
_SIZE = ctypes.sizeof(MMsgHdr)
_NAME = MsgHdr.msg_name.offset
_NAMELEN = MsgHdr.msg_namelen.offset
_CONTROL = MsgHdr.msg_control.offset
_CONTROLLEN = MsgHdr.msg_controllen.offset
_FLAGS = MsgHdr.msg_flags.offset
_LEN = MMsgHdr.msg_len.offset


def source_control(family: int, local: bytes) -> bytes:
    """The raw control message (struct cmsghdr and its data, padded to CMSG_SPACE) that makes a reply
    leave from `local`, the raw address the client sent to: IPV6_PKTINFO (struct in6_pktinfo: the address,
    then ifindex 0, any) or IP_PKTINFO (struct in_pktinfo: ifindex 0, ipi_spec_dst = the source, ipi_addr
    ignored)."""
    if family == socket.AF_INET6:
        level, kind, data = socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, local + bytes(4)
    else:
        level, kind, data = socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + local + bytes(4)
    message = _CMSG_HEADER.pack(socket.CMSG_LEN(len(data)), level, kind) + data
    return message.ljust(socket.CMSG_SPACE(len(data)), b"\0")


class ReplyBatch:
    """`capacity` reply slots of `buffer_size` bytes each, with the headers to receive into them
    (recvmmsg) and to send from them (sendmmsg) without copying a payload.

    Receiving fills slots `first` onwards; `received(i)` reads slot i's source, size and flags. To
    send, `stage(k, i, name, control)` makes message k carry slot i's reply to the raw sockaddr `name`
    with the raw control message `control` (b"": none), and `send(fd, first, count)` sends messages
    first..first+count-1."""

    def __init__(
        self,
        recvmmsg: Callable[..., int],
        sendmmsg: Callable[..., int],
        capacity: int = BATCH,
        buffer_size: int = 65536,
        control_space: int = 0,
    ) -> None:
        self._recvmmsg = recvmmsg
        self._sendmmsg = sendmmsg
        self.capacity = capacity
        self.buffer_size = buffer_size
        self.data = bytearray(capacity * buffer_size)
        # Received control messages (the tproxy reply socket's original destinations): `control_space`
        # bytes per slot, none by default.
        self.control_space = control_space
        self._arenas = [bytearray(capacity * NAME_SPACE) for _ in range(2)] + [
            bytearray(capacity * CONTROL_SPACE),
            bytearray(max(capacity * control_space, 1)),
        ]
        arrays = [(ctypes.c_char * len(arena)).from_buffer(arena) for arena in [self.data, *self._arenas]]
        self._arrays = arrays  # keep the exported buffers alive with us
        data, received_names, sent_names, controls, received_controls = (
            ctypes.addressof(array) for array in arrays
        )
        self._received = (MMsgHdr * capacity)()
        self._sent = (MMsgHdr * capacity)()
        self._received_iov = (IOVec * capacity)()
        self._sent_iov = (IOVec * capacity)()
        self._bases = [data + index * buffer_size for index in range(capacity)]
        for index in range(capacity):
            self._received_iov[index].iov_base = self._bases[index]
            self._received_iov[index].iov_len = buffer_size
            header = self._received[index].msg_hdr
            header.msg_iov = ctypes.addressof(self._received_iov[index])
            header.msg_iovlen = 1
            header.msg_name = received_names + index * NAME_SPACE
            header.msg_namelen = NAME_SPACE
            if control_space:
                header.msg_control = received_controls + index * control_space
                header.msg_controllen = control_space
            header = self._sent[index].msg_hdr
            header.msg_iov = ctypes.addressof(self._sent_iov[index])
            header.msg_iovlen = 1
            header.msg_name = sent_names + index * NAME_SPACE
            header.msg_control = controls + index * CONTROL_SPACE
        self._received_address = ctypes.addressof(self._received)
        self._sent_address = ctypes.addressof(self._sent)
        # Integer views: u32 of the received headers (lengths, flags, name lengths), u64 of the sent ones
        # and of their iovecs (lengths, pointers); every field index is computed once here.
        self._in32 = memoryview(self._received).cast("B").cast("I")
        self._in64 = memoryview(self._received).cast("B").cast("Q")
        self._out32 = memoryview(self._sent).cast("B").cast("I")
        self._out64 = memoryview(self._sent).cast("B").cast("Q")
        self._iov64 = memoryview(self._sent_iov).cast("B").cast("Q")
        self._length_at = [(index * _SIZE + _LEN) // 4 for index in range(capacity)]
        self._flags_at = [(index * _SIZE + _FLAGS) // 4 for index in range(capacity)]
        self._namelen_at = [(index * _SIZE + _NAMELEN) // 4 for index in range(capacity)]
        self._controllen_at = [(index * _SIZE + _CONTROLLEN) // 8 for index in range(capacity)]
        self._received_names = memoryview(self._arenas[0])
        self._sent_names = memoryview(self._arenas[1])
        self._controls = memoryview(self._arenas[2])
        self._received_controls = memoryview(self._arenas[3])
        self.view = memoryview(self.data)
        self._shortened = 0  # slots below this may hold a name length the kernel shortened

    @classmethod
    def create(
        cls, capacity: int = BATCH, buffer_size: int = 65536, control_space: int = 0
    ) -> "ReplyBatch | None":
        """A reply batch (receiving `control_space` bytes of control messages per reply), or None when this
        libc lacks recvmmsg or sendmmsg."""
        recvmmsg = libc_function("recvmmsg", RECVMMSG_ARGUMENTS, ctypes.c_int)
        sendmmsg = libc_function("sendmmsg", SENDMMSG_ARGUMENTS, ctypes.c_int)
        if recvmmsg is None or sendmmsg is None:
            return None
        return cls(recvmmsg, sendmmsg, capacity, buffer_size, control_space)

    def receive(self, fd: int, first: int, count: int) -> int:
        """Receive up to `count` replies queued on `fd` into slots first.., without blocking; how many
        (0: none queued). OSError for a failed receive (a pending ICMP error, reported once)."""
        in32, namelen_at = self._in32, self._namelen_at
        # msg_namelen (and msg_controllen) are in/out: the kernel shortened them in the slots it filled,
        # which are always the first `_shortened` ones; only those are restored (restoring all 64 cost more
        # than the call itself).
        for index in range(first, min(first + count, self._shortened)):
            in32[namelen_at[index]] = NAME_SPACE
        if self.control_space:
            in64, controllen_at, space = self._in64, self._controllen_at, self.control_space
            for index in range(first, min(first + count, self._shortened)):
                in64[controllen_at[index]] = space
        received: int = self._recvmmsg(fd, self._received_address + first * _SIZE, count, MSG_DONTWAIT, None)
        if received < 0:
            self._shortened = min(self._shortened, first)
            error = ctypes.get_errno()
            if error in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(error, os.strerror(error))
        self._shortened = first + received
        return received

    def received(self, index: int) -> tuple[bytes, int, int]:
        """Slot `index`'s reply: the raw struct sockaddr it came from, its size and its flags (one call:
        the loop asks this for every reply)."""
        in32, start = self._in32, index * NAME_SPACE
        name = bytes(self._received_names[start : start + in32[self._namelen_at[index]]])
        return name, in32[self._length_at[index]], in32[self._flags_at[index]]

    def control(self, index: int) -> memoryview:
        """Slot `index`'s control messages as the kernel wrote them (msg_controllen bytes)."""
        start = index * self.control_space
        return self._received_controls[start : start + self._in64[self._controllen_at[index]]]

    def payload(self, index: int) -> memoryview:
        """Slot `index`'s reply (cut to the buffer when it was larger: such a reply is never relayed)."""
        start = index * self.buffer_size
        return self.view[start : start + min(self._in32[self._length_at[index]], self.buffer_size)]

    def stage(self, message: int, index: int, name: bytes, control: bytes) -> None:
        """Make sendmmsg's message `message` carry slot `index`'s reply to `name` with `control`."""
        iov64 = self._iov64
        iov64[2 * message] = self._bases[index]
        iov64[2 * message + 1] = min(self._in32[self._length_at[index]], self.buffer_size)
        start = message * NAME_SPACE
        self._sent_names[start : start + len(name)] = name
        self._out32[self._namelen_at[message]] = len(name)
        if control:
            start = message * CONTROL_SPACE
            self._controls[start : start + len(control)] = control
        self._out64[self._controllen_at[message]] = len(control)

    def send(self, fd: int, first: int, count: int) -> tuple[int, int]:
        """Send staged messages first..first+count-1 from `fd`; (sent, errno): when errno is not 0, message
        first+sent failed with it and the ones after it were not tried."""
        sent: int = self._sendmmsg(fd, self._sent_address + first * _SIZE, count, 0)
        if sent < 0:
            return 0, ctypes.get_errno() or errno.EIO
        return sent, 0
