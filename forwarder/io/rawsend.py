"""The raw send path: one raw IPPROTO_UDP socket per family sends every client's datagrams, so no client
holds a socket of its own and a received batch leaves with one sendmmsg across all its clients.

Without IP_HDRINCL the kernel still builds the IP header, routes, runs netfilter and fragments; we give it
the UDP header (client port, backend port, length, checksum) as the first iovec of each message, the
payload straight from the receive buffer as the second, the backend (port 0) as its name and the client's
address as the source in an IP_PKTINFO / IPV6_PKTINFO control message. IPv6 gets the kernel's checksum
(IPV6_CHECKSUM); IPv4 raw sockets have none, so it is 0 ("none", RFC 768) or computed here (`checksum`).
"""

import ctypes
import errno
import socket
import struct
from collections.abc import Callable, Iterable

from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.flows import Flow
from forwarder.io.linux import IP_PKTINFO, SENDMMSG_ARGUMENTS, IOVec, MMsgHdr, MsgHdr, libc_function
from forwarder.io.sockets import set_receive_errors, set_transparent

IPV6_CHECKSUM = 7
SO_ATTACH_FILTER = 26
SO_SNDBUFFORCE = 32
UDP_HEADER = 8
# A batch of the largest datagrams (64 x 64 KiB) fits; a limit, not an allocation. Where it cannot be
# forced (no CAP_NET_ADMIN) the kernel caps it at net.core.wmem_max, and a full buffer makes sendmmsg wait
# (the socket blocks, for at most SEND_TIMEOUT) instead of dropping.
SEND_BUFFER = 8 << 20
SEND_TIMEOUT = struct.pack("@ll", 1, 0)  # struct timeval: 1 s
# One classic BPF instruction, BPF_RET|BPF_K 0: the socket accepts nothing, so it never queues copies of
# the host's UDP traffic (a raw IPPROTO_UDP socket gets one of every datagram the host receives).
_DROP_ALL = struct.pack("=HBBI", 0x06, 0, 0, 0)
_SIZE = ctypes.sizeof(MMsgHdr)
_WORDS = _SIZE // 8  # u64 words per struct mmsghdr: msg_name is word 0, msg_namelen word 1
# The control message of each datagram: a cmsghdr and struct in_pktinfo (ifindex 0, ipi_spec_dst = the
# client, ipi_addr unused) / struct in6_pktinfo (the client, ifindex 0).
CONTROL_SPACE = {socket.AF_INET: socket.CMSG_SPACE(12), socket.AF_INET6: socket.CMSG_SPACE(20)}
# What msg_controllen says: the message without its trailing padding. The kernel copies a control buffer of
# up to 36 bytes (a cmsghdr and an in6_pktinfo) to its stack and kmallocs a larger one, so CMSG_SPACE(20) =
# 40 would cost an IPv6 datagram a kmalloc and a kfree (counted with perf's kmem:kmalloc tracepoint).
CONTROL_LENGTH = {socket.AF_INET: socket.CMSG_LEN(12), socket.AF_INET6: socket.CMSG_LEN(20)}
_PKTINFO = {socket.AF_INET: (socket.IPPROTO_IP, IP_PKTINFO), socket.AF_INET6: (socket.IPPROTO_IPV6, 50)}
# Whether a send on a raw socket that failed with an errno failed by an earlier datagram's ICMP error (the
# engine reads the socket's error queue to say: forwarder.core.icmp.failed_by_pending_error).
Pending = Callable[[socket.socket, int], bool]
_HEADER = struct.Struct("!4sHH")  # the ports (prebuilt), the length, the checksum
_WORD = struct.Struct("=I")
_CONTROL_WORD = MsgHdr.msg_control.offset // 8  # msg_control's u64 within a struct mmsghdr


def _never(sock: socket.socket, error_number: int) -> bool:
    return False


def open_raw_socket(family: socket.AddressFamily) -> socket.socket:
    """The raw UDP socket that sends as every client of `family`: transparent, queueing ICMP errors,
    receiving nothing else. PermissionError without CAP_NET_RAW (or where a seccomp filter forbids it)."""
    sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_UDP)
    try:
        program = ctypes.create_string_buffer(_DROP_ALL, len(_DROP_ALL))
        sock.setsockopt(
            socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("@HxxxxxxP", 1, ctypes.addressof(program))
        )
        _discard(sock)  # copies queued before the filter was attached
        set_transparent(sock)
        set_receive_errors(sock)
        if family == socket.AF_INET6:  # the kernel fills in the UDP checksum at offset 6
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SEND_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, SEND_TIMEOUT)
    except OSError:
        sock.close()
        raise
    return sock


def _discard(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(1, socket.MSG_DONTWAIT)
        except OSError:
            return


def udp_checksum(partial: int, length: int, payload: memoryview | bytes) -> int:
    """The IPv4 UDP checksum of a datagram of `length` bytes (header included) given `partial`, the sum of
    its pseudo header's addresses and protocol and of its ports, and the payload. The 16-bit ones'
    complement sum of a byte string is the big-endian integer it spells, modulo 0xFFFF (2**16 = 1 there),
    which Python computes without a loop; an odd payload is padded with a zero byte (one shift). A sum of 0
    (all ones) is sent as 0xFFFF: 0 would mean "no checksum"."""
    data = int.from_bytes(payload, "big")
    if len(payload) & 1:
        data <<= 8
    total = (partial + 2 * length + data) % 0xFFFF
    return 0xFFFF - total if total else 0xFFFF


class RawFlow:
    """What a flow's datagrams need on the raw path, built once when the flow opens: its ports, the sum its
    checksum starts from, its control message, where the backend's sockaddr (port 0) is, and `queue`, its
    batch's (so that the hot path reaches it in one attribute load)."""

    __slots__ = (
        "batch",
        "control",
        "control_address",
        "destination",
        "name",
        "partial",
        "pktinfo",
        "port_word",
        "ports",
        "queue",
    )

    def __init__(self, batch: "RawBatch", source: tuple[str, int], destination: tuple[str, int]) -> None:
        family = batch.family
        self.batch = batch
        self.queue = batch.queue
        self.ports = struct.pack("!HH", source[1], destination[1])
        # The ports as the native u32 a slot's header gets in one store (its bytes are the network order).
        self.port_word: int = _WORD.unpack(self.ports)[0]
        self.destination = (destination[0], 0)
        self.name = batch.name_of(destination[0])
        address = socket.inet_pton(family, source[0])
        if family == socket.AF_INET6:
            self.pktinfo = address + bytes(4)
        else:
            self.pktinfo = bytes(4) + address + bytes(4)
        level, kind = _PKTINFO[family]
        header = struct.pack("@Nii", socket.CMSG_LEN(len(self.pktinfo)), level, kind)
        # A message's msg_control points here (the bytes object keeps its buffer for its life: ours).
        self.control = (header + self.pktinfo).ljust(CONTROL_SPACE[family], b"\0")
        self.control_address: int = ctypes.cast(ctypes.c_char_p(self.control), ctypes.c_void_p).value or 0
        backend = socket.inet_pton(family, destination[0])
        self.partial = (
            int.from_bytes(address, "big")
            + int.from_bytes(backend, "big")
            + socket.IPPROTO_UDP
            + source[1]
            + destination[1]
        )


class RawBatch:
    """The messages of one family waiting for one sendmmsg: per message, a preallocated UDP header; its name
    and control message point at the flow's prebuilt ones and its payload iovec into the receive buffer
    (nothing is copied). A slot keeps what it was given last (flow, payload address and size), and only
    what changed is written: a busy flow of equal-size datagrams rewrites nothing but the count."""

    def __init__(self, sock: socket.socket, sendmmsg: Callable[..., int], batch: int, checksum: bool) -> None:
        self.sock = sock
        self.family = sock.family
        self.fd = sock.fileno()
        self.checksum = checksum and self.family == socket.AF_INET
        self._sendmmsg = sendmmsg
        self.batch = batch
        self._headers = (MMsgHdr * batch)()
        self._iovecs = (IOVec * (2 * batch))()
        self.udp = bytearray(UDP_HEADER * batch)
        udp_array = (ctypes.c_char * len(self.udp)).from_buffer(self.udp)
        self._arrays = (udp_array,)
        for index in range(batch):
            self._iovecs[2 * index].iov_base = ctypes.addressof(udp_array) + UDP_HEADER * index
            self._iovecs[2 * index].iov_len = UDP_HEADER
            header = self._headers[index].msg_hdr
            header.msg_iov = ctypes.addressof(self._iovecs[2 * index])
            header.msg_iovlen = 2
            header.msg_namelen = 16 if self.family == socket.AF_INET else 28
            header.msg_controllen = CONTROL_LENGTH[self.family]
        self._address = ctypes.addressof(self._headers)
        self._u64 = memoryview(self._headers).cast("B").cast("Q")
        self._iov = memoryview(self._iovecs).cast("B").cast("Q")
        # The UDP headers as u16 (4 per message: ports, length, checksum) and u32 (2: ports, the rest).
        self._udp16 = memoryview(self.udp).cast("H")
        self._udp32 = memoryview(self.udp).cast("I")
        self._names: dict[str, ctypes.Array[ctypes.c_char]] = {}
        self.flows: list[Flow | None] = [None] * batch
        self._raws: list[RawFlow | None] = [None] * batch
        self._sizes = [-1] * batch
        self._payloads = [-1] * batch
        self.count = 0
        # Where a full batch's failures go and who explains them (set by RawSend; see flush).
        self.failed: list[tuple[Flow, int]] = []
        self.pending: Pending = _never

    def name_of(self, address: str) -> int:
        """The address of a struct sockaddr for `address`, port 0 (kept for good: a few destinations)."""
        name = self._names.get(address)
        if name is None:
            raw = sockaddr_bytes(self.family, (address, 0))
            name = self._names[address] = ctypes.create_string_buffer(raw, len(raw))
        return ctypes.addressof(name)

    def queue(self, flow: Flow, raw: RawFlow, address: int, size: int) -> None:
        """Add a datagram of `flow` of `size` bytes found at `address` (kept there until the flush); a full
        batch is sent first. This is the hot path: what the slot held last time is not written again."""
        index = self.count
        if index == self.batch:
            self.flush(self.failed, self.pending)
            index = 0
        self.count = index + 1
        at = index * 4  # the slot's first u64 of the iovecs, and its first u16 of the UDP headers
        if self._raws[index] is not raw:
            self._raws[index] = raw
            self.flows[index] = flow
            words = index * _WORDS
            u64 = self._u64
            u64[words] = raw.name
            u64[words + _CONTROL_WORD] = raw.control_address
            self._udp32[index + index] = raw.port_word
        if self._payloads[index] != address:
            self._payloads[index] = address
            self._iov[at + 2] = address
        if self._sizes[index] != size:
            self._sizes[index] = size
            self._iov[at + 3] = size
            total = size + UDP_HEADER
            self._udp16[at + 2] = (total >> 8) | ((total & 0xFF) << 8)  # network order
        if self.checksum:
            checksum = udp_checksum(raw.partial, size + UDP_HEADER, ctypes.string_at(address, size))
            self._udp16[at + 3] = (checksum >> 8) | ((checksum & 0xFF) << 8)

    def flush(self, failed: list[tuple[Flow, int]], pending: Pending) -> None:
        """Send what is queued; each datagram that could not be sent is added to `failed` with its errno. A
        send failing with an ICMP error left pending by an earlier datagram (`pending` says, from the error
        queue, where it is counted) is tried once more: it never costs a datagram."""
        first, count = 0, self.count
        retried = -1
        while first < count:
            sent: int = self._sendmmsg(self.fd, self._address + first * _SIZE, count - first, 0)
            if sent >= 0:
                first += sent
                continue
            error_number = ctypes.get_errno()
            if error_number == errno.EINTR:
                continue
            if retried != first and pending(self.sock, error_number):
                retried = first
                continue
            failed.append((self.flows[first], error_number))  # type: ignore[arg-type]
            first += 1
        self.count = 0


class RawSend:
    """The raw sockets, one batch of messages per family, and the flows' prebuilt parts. A datagram joins
    its family's batch by its flow's `raw.queue(flow, flow.raw, address, size)`; `flush` sends them."""

    def __init__(self, sockets: Iterable[socket.socket], batch: int, *, checksum: bool) -> None:
        sendmmsg = libc_function("sendmmsg", SENDMMSG_ARGUMENTS, ctypes.c_int)
        if sendmmsg is None:
            raise OSError(errno.ENOSYS, "this C library has no sendmmsg")
        self.checksum = checksum
        self.batches = {sock.family: RawBatch(sock, sendmmsg, batch, checksum) for sock in sockets}
        # The datagrams a flush could not send, with their errno: the caller counts them and clears it.
        self.failed: list[tuple[Flow, int]] = []
        for raw_batch in self.batches.values():
            raw_batch.failed = self.failed
        self._pending: Pending = _never

    @property
    def pending(self) -> Pending:
        """Whether a failed send was failed by an earlier datagram's ICMP error; set by the engine, which
        reads (and counts) the error queues."""
        return self._pending

    @pending.setter
    def pending(self, pending: Pending) -> None:
        self._pending = pending
        for batch in self.batches.values():
            batch.pending = pending

    @property
    def sockets(self) -> list[socket.socket]:
        return [batch.sock for batch in self.batches.values()]

    def prepare(self, flow: Flow) -> None:
        """Build what `flow`'s datagrams need on the raw path (once, when it opens)."""
        flow.raw = RawFlow(self.batches[flow.path.destination.family], flow.presented, flow.path.target)

    def queue(self, flow: Flow, address: int, size: int) -> None:
        """Add a datagram of `flow` (prepared) of `size` bytes at `address` to its family's batch; sent by
        `flush` (the hot path calls the flow's `raw.queue` itself, one call fewer)."""
        raw: RawFlow = flow.raw  # type: ignore[assignment]
        raw.queue(flow, raw, address, size)

    def flush(self) -> list[tuple[Flow, int]]:
        """Send every queued datagram (one sendmmsg per family); return `failed`, the ones that could not
        be sent (since it was last cleared) with their errno."""
        for batch in self.batches.values():
            if batch.count:
                batch.flush(self.failed, self._pending)
        return self.failed

    def send(self, flow: Flow, payload: memoryview) -> int:
        """Send one datagram of `flow` (prepared) now; 0, or the errno it failed with."""
        raw: RawFlow = flow.raw  # type: ignore[assignment]
        batch = raw.batch
        total = len(payload) + UDP_HEADER
        checksum = udp_checksum(raw.partial, total, payload) if batch.checksum else 0
        header = _HEADER.pack(raw.ports, total, checksum)
        level, kind = _PKTINFO[batch.family]
        retried = False
        while True:
            try:
                batch.sock.sendmsg((header, payload), [(level, kind, raw.pktinfo)], 0, raw.destination)
            except OSError as error:
                error_number = error.errno or errno.EIO
                if not retried and self.pending(batch.sock, error_number):
                    retried = True
                    continue
                return error_number
            return 0

    def close(self) -> None:
        for batch in self.batches.values():
            batch.sock.close()
