"""The backend's replies in batches (relay mode): recvmmsg on each ready flow socket into one arena, then
every reply gathered in a pass leaves with one sendmmsg per listening socket, each message with its own
client address and, where the listener needs it, its own IP_PKTINFO / IPV6_PKTINFO source.

A reply used to cost a wake-up, an error-queue read, a recvmsg (and one more that found the queue empty)
and a sendmsg; a pass over n ready flow sockets now costs n recvmmsg and one sendmmsg per listener. The
structures are forwarder.batch's (the stable Linux ABI through ctypes, the standard library only); where
libc lacks recvmmsg or sendmmsg, `ReplyBatch.create()` returns None and the engine relays one at a time.

What Python does per reply is what a batch costs, so the work is done a batch at a time where it can be:
the headers the kernel shortened are restored with one copy, a slot's source and control messages are one
contiguous key (read for a whole batch by one struct call, matched by one dict lookup each), and a batch
for one listener is staged with a few slice stores (`stage_run`) instead of five stores per reply.
"""

import ctypes
import errno
import os
import socket
import struct
import sys
from array import array
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
_WORDS = _SIZE // 4  # u32 per mmsghdr
_QUADS = _SIZE // 8  # u64 per mmsghdr
# Of a slot's control messages, the part its key holds by default: a whole original destination's message
# of either family (struct cmsghdr and struct sockaddr_in6, the larger), when it is the first.
KEY_CONTROL = socket.CMSG_SPACE(28)
# Where the low half of a u64 is, counted in u32: an iovec's length is written through a u32 view.
_LOW = 0 if sys.byteorder == "little" else 1


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

    Receiving fills slots `first` onwards; `received(i)` reads slot i's source, size and flags, `control(i)`
    its control messages (`control_space` bytes of room per slot), and `keys(first, count)` the key of
    each: its source's struct sockaddr (zero-padded to `name_space`) followed by the first `key_control`
    bytes of its control messages (zero-padded), one contiguous piece of the slot. To send, `stage(k, i, name,
    control)` makes message k carry slot i's reply to the raw sockaddr `name` with the raw control message
    `control` (b"": none), or `stage_run` makes messages first.. carry slots first.. at once; `send(fd,
    first, count)` sends messages first..first+count-1."""

    def __init__(  # noqa: PLR0913 - the two calls, then the sizes of the arenas
        self,
        recvmmsg: Callable[..., int],
        sendmmsg: Callable[..., int],
        capacity: int = BATCH,
        buffer_size: int = 65536,
        *,
        control_space: int = 0,
        name_space: int = NAME_SPACE,
        key_control: int = KEY_CONTROL,
    ) -> None:
        self._recvmmsg = recvmmsg
        self._sendmmsg = sendmmsg
        self.capacity = capacity
        self.buffer_size = buffer_size
        self.data = bytearray(capacity * buffer_size)
        # Per slot: the source's sockaddr, then room for its control messages (the tproxy reply socket's
        # original destinations: `control_space` bytes, none by default).
        self.control_space = control_space
        self.name_space = name_space
        self.slot_space = name_space + control_space
        self._slots = bytearray(capacity * self.slot_space)
        self._arenas = [self._slots, bytearray(capacity * NAME_SPACE), bytearray(capacity * CONTROL_SPACE)]
        arrays = [(ctypes.c_char * len(arena)).from_buffer(arena) for arena in [self.data, *self._arenas]]
        self._arrays = arrays  # keep the exported buffers alive with us
        data, slots, sent_names, controls = (ctypes.addressof(array) for array in arrays)
        self._received = (MMsgHdr * capacity)()
        self._sent = (MMsgHdr * capacity)()
        self._received_iov = (IOVec * capacity)()
        self._sent_iov = (IOVec * capacity)()
        self._bases = [data + index * buffer_size for index in range(capacity)]
        self._base_array = array("Q", self._bases)
        self._link(slots)
        self._sent_names_address = sent_names
        self._controls_address = controls
        self._received_address = ctypes.addressof(self._received)
        self._sent_address = ctypes.addressof(self._sent)
        # The received headers as the kernel must find them (msg_namelen, msg_controllen are in/out: it
        # shortens them), restored with one copy before each receive; and the slots' names and control
        # messages zeroed, so that bytes the kernel did not write never differ in a key.
        self._headers = memoryview(self._received).cast("B")
        self._pristine = memoryview(bytes(self._headers))
        self._slot_view = memoryview(self._slots)
        self._zero_slots = memoryview(bytes(len(self._slots)))
        # Integer views: u32 of the received headers (lengths, flags, name lengths), u64 of the sent ones
        # and of their iovecs (lengths, pointers); every field index is computed once here.
        self._in32 = memoryview(self._received).cast("B").cast("I")
        self._in64 = memoryview(self._received).cast("B").cast("Q")
        self._out32 = memoryview(self._sent).cast("B").cast("I")
        self._out64 = memoryview(self._sent).cast("B").cast("Q")
        self._iov64 = memoryview(self._sent_iov).cast("B").cast("Q")
        self._length_at = [index * _WORDS + _LEN // 4 for index in range(capacity)]
        self._flags_at = [index * _WORDS + _FLAGS // 4 for index in range(capacity)]
        self._namelen_at = [index * _WORDS + _NAMELEN // 4 for index in range(capacity)]
        self._controllen_at = [index * _QUADS + _CONTROLLEN // 8 for index in range(capacity)]
        self._sent_names = memoryview(self._arenas[1])
        self._controls = memoryview(self._arenas[2])
        self.view = memoryview(self.data)
        self.key_space = name_space + min(control_space, key_control)
        self._iov32 = memoryview(self._sent_iov).cast("B").cast("I")
        # What the last run of messages left in their headers (its first message, name and control
        # lengths, and how many): a run of the same shape rewrites only names, controls and lengths.
        self._run: tuple[int, int, int] | None = None
        self._run_count = 0
        # One struct per batch size that reads every slot's key at once (built when first needed).
        self._key_readers: dict[int, Callable[..., tuple[bytes, ...]]] = {}

    def _link(self, slots: int) -> None:
        """Point each received header at its payload buffer and its slot (at `slots`), each sent header at
        its iovec."""
        for index in range(self.capacity):
            self._received_iov[index].iov_base = self._bases[index]
            self._received_iov[index].iov_len = self.buffer_size
            header = self._received[index].msg_hdr
            header.msg_iov = ctypes.addressof(self._received_iov[index])
            header.msg_iovlen = 1
            header.msg_name = slots + index * self.slot_space
            header.msg_namelen = self.name_space
            if self.control_space:
                header.msg_control = slots + index * self.slot_space + self.name_space
                header.msg_controllen = self.control_space
            header = self._sent[index].msg_hdr
            header.msg_iov = ctypes.addressof(self._sent_iov[index])
            header.msg_iovlen = 1

    @classmethod
    def create(
        cls,
        capacity: int = BATCH,
        buffer_size: int = 65536,
        *,
        control_space: int = 0,
        name_space: int = NAME_SPACE,
        key_control: int = KEY_CONTROL,
    ) -> "ReplyBatch | None":
        """A reply batch (receiving `control_space` bytes of control messages per reply, and sources of up
        to `name_space` bytes), or None when this libc lacks recvmmsg or sendmmsg."""
        recvmmsg = libc_function("recvmmsg", RECVMMSG_ARGUMENTS, ctypes.c_int)
        sendmmsg = libc_function("sendmmsg", SENDMMSG_ARGUMENTS, ctypes.c_int)
        if recvmmsg is None or sendmmsg is None:
            return None
        return cls(
            recvmmsg,
            sendmmsg,
            capacity,
            buffer_size,
            control_space=control_space,
            name_space=name_space,
            key_control=key_control,
        )

    def receive(self, fd: int, first: int, count: int) -> int:
        """Receive up to `count` replies queued on `fd` into slots first.., without blocking; how many
        (0: none queued). OSError for a failed receive (a pending ICMP error, reported once)."""
        start, end = first * _SIZE, (first + count) * _SIZE
        self._headers[start:end] = self._pristine[start:end]
        if self.control_space:
            start, end = first * self.slot_space, (first + count) * self.slot_space
            self._slot_view[start:end] = self._zero_slots[start:end]
        received: int = self._recvmmsg(fd, self._received_address + first * _SIZE, count, MSG_DONTWAIT, None)
        if received < 0:
            error = ctypes.get_errno()
            if error in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(error, os.strerror(error))
        return received

    def received(self, index: int) -> tuple[bytes, int, int]:
        """Slot `index`'s reply: the raw struct sockaddr it came from, its size and its flags (one call:
        the loop asks this for every reply)."""
        in32, start = self._in32, index * self.slot_space
        name = bytes(self._slot_view[start : start + in32[self._namelen_at[index]]])
        return name, in32[self._length_at[index]], in32[self._flags_at[index]]

    def control(self, index: int) -> memoryview:
        """Slot `index`'s control messages as the kernel wrote them (msg_controllen bytes)."""
        start = index * self.slot_space + self.name_space
        return self._slot_view[start : start + self._in64[self._controllen_at[index]]]

    def flagged(self, first: int, count: int) -> bool:
        """Whether any of slots first.. came with flags (MSG_TRUNC, MSG_CTRUNC): checked for all at once."""
        start = first * _WORDS + _FLAGS // 4
        return any(self._in32[start : start + count * _WORDS : _WORDS])

    def keys(self, first: int, count: int) -> tuple[bytes, ...]:
        """The key of each of slots first.. (see the class), read by one struct call."""
        read = self._key_readers.get(count)
        if read is None:
            layout = f"{self.key_space}s{self.slot_space - self.key_space}x" * count
            read = self._key_readers[count] = struct.Struct(layout).unpack_from
        return read(self._slots, first * self.slot_space)

    def key(self, index: int) -> bytes:
        """Slot `index`'s key alone."""
        start = index * self.slot_space
        return bytes(self._slot_view[start : start + self.key_space])

    def payload(self, index: int) -> memoryview:
        """Slot `index`'s reply (cut to the buffer when it was larger: such a reply is never relayed)."""
        start = index * self.buffer_size
        return self.view[start : start + min(self._in32[self._length_at[index]], self.buffer_size)]

    def stage(self, message: int, index: int, name: bytes, control: bytes) -> None:
        """Make sendmmsg's message `message` carry slot `index`'s reply to `name` with `control`."""
        self._run = None
        iov64 = self._iov64
        iov64[2 * message] = self._bases[index]
        iov64[2 * message + 1] = min(self._in32[self._length_at[index]], self.buffer_size)
        start = message * NAME_SPACE
        self._sent_names[start : start + len(name)] = name
        out64, at = self._out64, message * _QUADS
        out64[at] = self._sent_names_address + start
        self._out32[self._namelen_at[message]] = len(name)
        if control:
            start = message * CONTROL_SPACE
            self._controls[start : start + len(control)] = control
            out64[at + _CONTROL // 8] = self._controls_address + start
        out64[self._controllen_at[message]] = len(control)

    def stage_run(self, first: int, count: int, names: bytes, controls: bytes) -> None:
        """Make messages first.. carry slots first..'s replies (none flagged), message k to the k-th of
        `names` (raw sockaddrs of one length, back to back) with the k-th of `controls` (raw control
        messages of one length; b"": none): a few slice stores for the whole run, and fewer when the last
        run had its shape (its pointers and lengths are still there)."""
        end = first + count
        name_length, control_length = len(names) // count, len(controls) // count
        names_at, controls_at = first * NAME_SPACE, first * CONTROL_SPACE  # within the messages' own room
        self._sent_names[names_at : names_at + len(names)] = names
        if control_length:
            self._controls[controls_at : controls_at + len(controls)] = controls
        # The lengths, u32 to the low halves of the u64 iov_len (the high halves are always 0).
        start = first * _WORDS + _LEN // 4
        self._iov32[4 * first + 2 + _LOW : 4 * end : 4] = self._in32[start : start + count * _WORDS : _WORDS]
        shape = (first, name_length, control_length)
        if self._run == shape and count <= self._run_count:
            return
        self._run, self._run_count = shape, count
        out64, out32 = self._out64, self._out32
        self._iov64[2 * first : 2 * end : 2] = self._base_array[first:end]
        address = self._sent_names_address + names_at
        pointers = array("Q", range(address, address + len(names), name_length))
        out64[first * _QUADS : end * _QUADS : _QUADS] = pointers
        start = first * _WORDS + _NAMELEN // 4
        out32[start : start + count * _WORDS : _WORDS] = array("I", [name_length]) * count
        if control_length:
            address = self._controls_address + controls_at
            pointers = array("Q", range(address, address + len(controls), control_length))
            out64[first * _QUADS + _CONTROL // 8 : end * _QUADS : _QUADS] = pointers
        start = first * _QUADS + _CONTROLLEN // 8
        out64[start : start + count * _QUADS : _QUADS] = array("Q", [control_length]) * count

    def send(self, fd: int, first: int, count: int) -> tuple[int, int]:
        """Send staged messages first..first+count-1 from `fd`; (sent, errno): when errno is not 0, message
        first+sent failed with it and the ones after it were not tried."""
        sent: int = self._sendmmsg(fd, self._sent_address + first * _SIZE, count, 0)
        if sent < 0:
            return 0, ctypes.get_errno() or errno.EIO
        return sent, 0
