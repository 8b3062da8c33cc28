"""recvmmsg(2) and sendmmsg(2) through ctypes: up to BATCH datagrams per system call into preallocated
buffers, and a run of one flow's datagrams out of them in one call.

The standard library has neither, and the forwarder may use nothing but the standard library, so they are
called through the stable Linux ABI (forwarder.io.linux: struct mmsghdr, msghdr, iovec). Per datagram, the
engine reads only integers and a slice of the sender's raw sockaddr, which is also its flow key: a hit in the
flow table needs no address parsing at all. Where libc lacks recvmmsg, `BatchReceiver.create()` returns None
and the engine keeps its one-datagram-per-call path.
"""

import ctypes
import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from forwarder.core.addresses import sockaddr_bytes
from forwarder.io.linux import (
    MSG_DONTWAIT,
    RECVMMSG_ARGUMENTS,
    SENDMMSG_ARGUMENTS,
    IOVec,
    MMsgHdr,
    MsgHdr,
    libc_function,
)

if TYPE_CHECKING:
    from forwarder.io.gso import BatchGso

BATCH = 64
NAME_SPACE = 32  # room for a struct sockaddr_in6 (28 bytes), rounded up
NAME_LENGTH = {socket.AF_INET: 16, socket.AF_INET6: 28}


_SIZE = ctypes.sizeof(MMsgHdr)
_NAMELEN_OFFSET = MsgHdr.msg_namelen.offset
_FLAGS_OFFSET = MsgHdr.msg_flags.offset
_CONTROLLEN_OFFSET = MsgHdr.msg_controllen.offset
_LEN_OFFSET = MMsgHdr.msg_len.offset


class Slot(NamedTuple):
    """Where datagram i of a batch is: its length and flags (indexes into the u32 view of the headers),
    its sender's sockaddr (a range of the name buffer) and its payload (an offset in the data buffer)."""

    length: int
    flags: int
    name: int
    data: int


class BatchReceiver:
    """Receives up to BATCH datagrams with one recvmmsg call; the buffers are reused for every call.

    With `control_size`, each datagram also gets that much room for ancillary data (IP_PKTINFO): the
    control message of datagram i starts at `controls[i]` in `control_view`, and `u32[control_lengths[i]]`
    is its length (0 when there is none)."""

    def __init__(
        self,
        recvmmsg: Callable[..., int],
        batch: int = BATCH,
        buffer_size: int = 65536,
        control_size: int = 0,
    ) -> None:
        self._recvmmsg = recvmmsg
        self.batch = batch
        self.buffer_size = buffer_size
        self.control_size = control_size
        self.data = bytearray(buffer_size * batch)
        self.names = bytearray(NAME_SPACE * batch)
        data_array = (ctypes.c_char * len(self.data)).from_buffer(self.data)
        names_array = (ctypes.c_char * len(self.names)).from_buffer(self.names)
        self._iovecs = (IOVec * batch)()
        self._headers = (MMsgHdr * batch)()
        for index in range(batch):
            self._iovecs[index].iov_base = ctypes.addressof(data_array) + index * buffer_size
            self._iovecs[index].iov_len = buffer_size
            header = self._headers[index].msg_hdr
            header.msg_iov = ctypes.addressof(self._iovecs[index])
            header.msg_iovlen = 1
            header.msg_name = ctypes.addressof(names_array) + index * NAME_SPACE
            header.msg_namelen = NAME_SPACE
        self.control = bytearray(max(control_size, 1) * batch)
        control_array = (ctypes.c_char * len(self.control)).from_buffer(self.control)
        if control_size:
            for index in range(batch):
                header = self._headers[index].msg_hdr
                header.msg_control = ctypes.addressof(control_array) + index * control_size
                header.msg_controllen = control_size
        self._arrays = (data_array, names_array, control_array)  # keep the exported buffers alive with us
        self.data_address = ctypes.addressof(data_array)  # where slot i's datagram is: + slots[i].data
        self._address = ctypes.addressof(self._headers)
        self.u32 = memoryview(self._headers).cast("B").cast("I")
        self.control_view = memoryview(self.control)
        self.controls = [index * control_size for index in range(batch)]
        # The low half of each size_t msg_controllen (little-endian), in u32; the high half stays 0.
        self.control_lengths = [(index * _SIZE + _CONTROLLEN_OFFSET) // 4 for index in range(batch)]
        self.view = memoryview(self.data)
        self.name_view = memoryview(self.names)
        self._namelen_indexes = [(index * _SIZE + _NAMELEN_OFFSET) // 4 for index in range(batch)]
        self._used = batch  # headers whose in/out name length the kernel may have shortened
        self.slots = [
            Slot(
                (index * _SIZE + _LEN_OFFSET) // 4,
                (index * _SIZE + _FLAGS_OFFSET) // 4,
                index * NAME_SPACE,
                index * buffer_size,
            )
            for index in range(batch)
        ]

    @classmethod
    def create(
        cls, batch: int = BATCH, buffer_size: int = 65536, control_size: int = 0
    ) -> "BatchReceiver | None":
        """A receiver, or None when this libc has no recvmmsg (the engine then receives one at a time)."""
        recvmmsg = libc_function("recvmmsg", RECVMMSG_ARGUMENTS, ctypes.c_int)
        return None if recvmmsg is None else cls(recvmmsg, batch, buffer_size, control_size)

    def receive(self, fd: int) -> int:
        """Receive what is queued on `fd`, up to a batch, without blocking; 0 when nothing is queued."""
        u32 = self.u32
        for index in self._namelen_indexes[: self._used]:  # in/out: the kernel shortened them last time
            u32[index] = NAME_SPACE
        if self.control_size:
            for index in self.control_lengths[: self._used]:  # in/out too
                u32[index] = self.control_size
        count: int = self._recvmmsg(fd, self._address, self.batch, MSG_DONTWAIT, None)
        if count < 0:
            self._used = 0
            error = ctypes.get_errno()
            if error in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(error, os.strerror(error))
        self._used = count
        return count


class BatchSender:
    """sendmmsg for a run of datagrams of one flow, straight from a BatchReceiver's buffers.

    A run of n datagrams from one client to one destination costs one system call instead of n. The
    headers point at the receiver's slots once and for all; a run only sets its lengths and destination.
    `prefixed` (--send-proxy-protocol): each message has two iovecs, the flow's PROXY header, then the
    datagram as received.
    """

    def __init__(self, sendmmsg: Callable[..., int], receiver: BatchReceiver, prefixed: bool = False) -> None:
        self._sendmmsg = sendmmsg
        self._receiver = receiver  # its buffers are what the headers point into: keep them alive
        batch = receiver.batch
        stride = 2 if prefixed else 1
        self._iovecs = (IOVec * (batch * stride))()
        self._headers = (MMsgHdr * batch)()
        data_address = ctypes.addressof(receiver._arrays[0])
        self._bases = [data_address + index * receiver.buffer_size for index in range(batch)]
        self._moved: set[int] = set()  # slots whose iovec starts after a PROXY header now
        # Where in the u64 view of the iovecs each message's data iovec starts (base; its length follows),
        # and, when prefixed, its header iovec.
        self._data_at = [2 * (index * stride + stride - 1) for index in range(batch)]
        self._prefix_at = [2 * index * stride for index in range(batch)] if prefixed else []
        for index in range(batch):
            self._iovecs[index * stride + stride - 1].iov_base = self._bases[index]
            header = self._headers[index].msg_hdr
            header.msg_iov = ctypes.addressof(self._iovecs[index * stride])
            header.msg_iovlen = stride
        self._address = ctypes.addressof(self._headers)
        self._iov_u64 = memoryview(self._iovecs).cast("B").cast("Q")
        self._receiver_u32 = receiver.u32
        self._slots = receiver.slots
        self._names: dict[tuple[str, int], ctypes.Array[ctypes.c_char]] = {}
        self._destination: tuple[str, int] | None = None
        self._name = (0, 0)  # address and length of the struct sockaddr runs go to (0: connected sockets)
        self.gso: BatchGso | None = None  # set by enable_gso(): runs of equal sizes leave as one GSO send

    @classmethod
    def create(cls, receiver: BatchReceiver, prefixed: bool = False) -> "BatchSender | None":
        """A sender for `receiver`'s buffers, or None when this libc has no sendmmsg."""
        sendmmsg = libc_function("sendmmsg", SENDMMSG_ARGUMENTS, ctypes.c_int)
        return None if sendmmsg is None else cls(sendmmsg, receiver, prefixed)

    def aim(self, family: socket.AddressFamily, destination: tuple[str, int] | None) -> None:
        """Send the following runs to `destination`, or with no address (connected sockets) for None;
        cheap when it is the same as before."""
        if destination == self._destination:
            return
        address, length = 0, 0
        if destination is not None:
            name = self._names.get(destination)
            if name is None:
                raw = sockaddr_bytes(family, destination)
                name = self._names[destination] = ctypes.create_string_buffer(raw, len(raw))
            address, length = ctypes.addressof(name), len(name)
        for index in range(len(self._headers)):
            header = self._headers[index].msg_hdr
            header.msg_name = address
            header.msg_namelen = length
        self._destination = destination
        self._name = (address, length)
        if self.gso is not None:
            self.gso.aim(address, length)

    def enable_gso(self) -> bool:
        """Send runs of equal-size datagrams with UDP GSO from now on, where the kernel has it (not on a
        prefixed sender: its messages are two iovecs each)."""
        from forwarder.io.gso import BatchGso  # gso builds on this module's structures

        if self._prefix_at:
            return False
        self.gso = BatchGso.create(self._iovecs)
        if self.gso is not None:
            self.gso.aim(*self._name)
        return self.gso is not None

    def send_segmented(self, fd: int, first: int, count: int, segment: int) -> int:
        """Send received datagrams first..first+count-1 (all `segment` bytes but the last, which may be
        shorter) as one GSO send; 0, or the errno (nothing of the run was sent)."""
        gso = self.gso
        assert gso is not None
        u32, iov, slots = self._receiver_u32, self._iov_u64, self._slots
        for index in range(first, first + count):
            iov[2 * index + 1] = u32[slots[index].length]
        if self._moved:  # an earlier run started these iovecs after a PROXY header: whole datagrams now
            for index in range(first, first + count):
                if index in self._moved:
                    iov[2 * index] = self._bases[index]
                    self._moved.discard(index)
        return gso.send(fd, first, count, segment)

    def send_run(
        self,
        fd: int,
        first: int,
        count: int,
        skips: dict[int, int] | None = None,
        prefix: bytearray | None = None,
    ) -> tuple[int, int]:
        """Send received datagrams first..first+count-1 from `fd`, datagram i without its first `skips[i]`
        bytes when given (a PROXY header: the iovec starts after it, nothing is copied), each after
        `prefix` on a prefixed sender (the flow's PROXY header, also not copied). Returns (sent, errno):
        when errno is not 0, datagram first+sent failed with it and the ones after it were not tried."""
        u32, iov, slots, data_at = self._receiver_u32, self._iov_u64, self._slots, self._data_at
        for index in range(first, first + count):
            iov[data_at[index] + 1] = u32[slots[index].length]
        if skips or self._moved:
            bases, moved = self._bases, self._moved
            for index in range(first, first + count):
                skip = skips.get(index, 0) if skips else 0
                iov[data_at[index]] = bases[index] + skip  # or back where it was: an earlier run moved it
                iov[data_at[index] + 1] -= skip
                if skip:
                    moved.add(index)
                else:
                    moved.discard(index)
        if self._prefix_at:
            address = ctypes.addressof(ctypes.c_char.from_buffer(prefix)) if prefix else 0
            size = len(prefix) if prefix else 0
            for index in range(first, first + count):
                at = self._prefix_at[index]
                iov[at] = address
                iov[at + 1] = size
        sent: int = self._sendmmsg(fd, self._address + first * _SIZE, count, 0)
        if sent < 0:
            return 0, ctypes.get_errno()
        return sent, 0
