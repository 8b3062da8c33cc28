"""The control messages of a received datagram: the local address it was sent to (IP_PKTINFO /
IPV6_PKTINFO) and, on a socket a tproxy rule feeds, the address and port it was sent to before it was
steered there (IP_ORIGDSTADDR / IPV6_ORIGDSTADDR), found by level and type in whatever else a
handed-over socket adds (timestamps, TOS, TTL),
in recvmsg's list or in the raw cmsghdr chain recvmmsg fills; a chain cut short (MSG_CTRUNC) is trusted for
nothing, and said once per listener.
"""

import logging
import socket
import struct

from forwarder.io.linux import IP_ORIGDSTADDR, IP_PKTINFO, IPV6_ORIGDSTADDR

# Ancillary room per datagram: the pktinfo message (struct in6_pktinfo, 20 bytes, is the larger) and what
# else a handed-over socket may have enabled (systemd's Timestamping=: a timeval or timespec; a
# SO_TIMESTAMPING triple; TOS, TTL, marks, original destinations), with room to spare.
PKTINFO_SPACE = socket.CMSG_SPACE(20)
CONTROL_SPACE = 512
# Where the local address is in a received pktinfo message's data: (offset, length) of in_pktinfo's
# ipi_spec_dst, and of in6_pktinfo's ipi6_addr (v4-mapped for an IPv4 client of a dual-stack socket).
PKTINFO_ADDRESS = {socket.AF_INET: (4, 4), socket.AF_INET6: (0, 16)}
# The (level, type) of the pktinfo message a listener of each family gets (an IPv6 socket with IP_PKTINFO
# set too gets both for an IPv4 client: its IPV6_PKTINFO is the one in the socket's family).
PKTINFO_KIND = {
    socket.AF_INET: (socket.IPPROTO_IP, IP_PKTINFO),
    socket.AF_INET6: (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO),
}
# The original destination's message, by (level, type), and the size of the struct sockaddr it holds: an
# IPv4 datagram gives a sockaddr_in even on a dual-stack IPv6 socket.
ORIGDST_KINDS = {
    (socket.IPPROTO_IP, IP_ORIGDSTADDR): 16,
    (socket.IPPROTO_IPV6, IPV6_ORIGDSTADDR): 28,
}
# The local address of a datagram whose control messages were cut short (MSG_CTRUNC): not known, so its
# flow's replies are not sent from a guess (see Engine.relay).
UNKNOWN_LOCAL = b""
# A plain int: `flags & socket.MSG_CTRUNC` (an IntFlag) runs enum.Flag's Python code, about 1 us per datagram
# or reply, more than the rest of the walk.
MSG_CTRUNC = int(socket.MSG_CTRUNC)
# struct cmsghdr: size_t cmsg_len, int cmsg_level, int cmsg_type; messages start CMSG_ALIGN'ed.
_CMSGHDR = struct.Struct("@Nii")
_ALIGN = struct.calcsize("@N")
_HEADER = _CMSGHDR.size
# The whole struct cmsghdr of each original destination's message (its cmsg_len says the sockaddr's size is
# the one expected) -> that size: one bytes compare checks a message's length, level and type.
ORIGDST_HEADERS = {
    _CMSGHDR.pack(socket.CMSG_LEN(size), level, kind): size for (level, kind), size in ORIGDST_KINDS.items()
}

log = logging.getLogger("forwarder")


def pktinfo_local(
    ancillary: list[tuple[int, int, bytes]], family: socket.AddressFamily, flags: int = 0
) -> bytes | None:
    """The raw local address a datagram was sent to, from recvmsg's ancillary data (None when it has no
    pktinfo message; UNKNOWN_LOCAL when the chain was cut short: nothing in it is trusted)."""
    if flags & MSG_CTRUNC:
        return UNKNOWN_LOCAL
    wanted = PKTINFO_KIND[family]
    offset, length = PKTINFO_ADDRESS[family]
    for level, kind, data in ancillary:
        if (level, kind) == wanted and len(data) >= offset + length:
            return bytes(data[offset : offset + length])
    return None


def pktinfo_in_control(
    control: bytes | bytearray | memoryview, family: socket.AddressFamily, flags: int = 0
) -> bytes | None:
    """pktinfo_local for a raw control buffer as recvmsg/recvmmsg filled it (`control` is msg_controllen
    bytes long): the cmsghdr chain is walked by level and type, each message at CMSG_ALIGN."""
    if flags & MSG_CTRUNC:
        return UNKNOWN_LOCAL
    wanted = PKTINFO_KIND[family]
    offset, length = PKTINFO_ADDRESS[family]
    header = _CMSGHDR.size
    end = len(control)
    at = 0
    while at + header <= end:
        size, level, kind = _CMSGHDR.unpack_from(control, at)
        if size < header or at + size > end:
            return None  # malformed: nothing after it can be found
        if (level, kind) == wanted and size >= header + offset + length:
            start = at + header + offset
            return bytes(control[start : start + length])
        at += (size + _ALIGN - 1) & -_ALIGN
    return None


def origdst_local(ancillary: list[tuple[int, int, bytes]], flags: int = 0) -> bytes | None:
    """The raw struct sockaddr (address and port) a datagram was sent to before a tproxy rule steered it,
    from recvmsg's ancillary data: None when it has none, UNKNOWN_LOCAL when the chain was cut short."""
    if flags & MSG_CTRUNC:
        return UNKNOWN_LOCAL
    for level, kind, data in ancillary:
        size = ORIGDST_KINDS.get((level, kind))
        if size is not None and len(data) >= size:
            return bytes(data[:size])
    return None


def origdst_first(control: bytes | bytearray | memoryview) -> bytes | None:
    """The original destination in a raw control buffer whose first message is it (the reply socket's
    only one): read at its fixed offset once its header (length, level, type) is checked in one compare;
    None when the first message is another (walk them: origdst_in_control). The caller has checked the
    flags for MSG_CTRUNC."""
    size = ORIGDST_HEADERS.get(bytes(control[:_HEADER]))
    if size is None or len(control) < _HEADER + size:
        return None
    return bytes(control[_HEADER : _HEADER + size])


def origdst_in_control(control: bytes | bytearray | memoryview, flags: int = 0) -> bytes | None:
    """origdst_local for a raw control buffer as recvmsg/recvmmsg filled it (`control` is msg_controllen
    bytes long), walked like pktinfo_in_control."""
    if flags & MSG_CTRUNC:
        return UNKNOWN_LOCAL
    client = origdst_first(control)
    if client is not None:
        return client
    header = _CMSGHDR.size
    end = len(control)
    at = 0
    while at + header <= end:
        length, level, kind = _CMSGHDR.unpack_from(control, at)
        if length < header or at + length > end:
            return None  # malformed: nothing after it can be found
        size = ORIGDST_KINDS.get((level, kind))
        if size is not None and length >= header + size:
            return bytes(control[at + header : at + header + size])
        at += (length + _ALIGN - 1) & -_ALIGN
    return None


class ControlTruncated:
    """Logs once per listener that its datagrams' control messages were cut short (their pktinfo is not
    trusted: the flow's replies are dropped as reply-send-error:EADDRNOTAVAIL, never sent from a guess)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, listener: str) -> None:
        if listener not in self._seen:
            self._seen.add(listener)
            log.warning(
                "control messages of datagrams on %s were cut short (MSG_CTRUNC): the address a client "
                "sent to is unknown, so its replies are dropped; turn off the socket options that add "
                "control messages (e.g. Timestamping= in the .socket unit)",
                listener,
            )


CONTROL_TRUNCATED = ControlTruncated()
