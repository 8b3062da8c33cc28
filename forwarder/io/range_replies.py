"""Relay mode on a port range: a reply must leave from the exact address and port its client sent to (a
port of the range, not the socket's own), which the listening socket cannot send from. A raw UDP socket per
family can (forwarder.io.rawsend: the UDP header is ours, the source address an IP_PKTINFO message), so
each reply of a range flow leaves there; a v4-mapped client gets an IPv4 reply.
"""

import contextlib
import errno
import socket
import struct
from collections.abc import Iterable

from forwarder.core.addresses import plain_address
from forwarder.core.flows import Flow, bounded_put
from forwarder.core.ranges import reply_source
from forwarder.io.linux import IP_PKTINFO, IP_RECVERR, IPV6_RECVERR
from forwarder.io.rawsend import UDP_HEADER, RawFlow, RawSend, open_raw_socket, udp_checksum

# The prebuilt parts of recent (client, address asked) pairs, built once each.
CACHE_SIZE = 4096
_HEADER = struct.Struct("!4sHH")  # the ports (prebuilt), the length, the checksum
_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}
_PKTINFO = {
    socket.AF_INET: (socket.IPPROTO_IP, IP_PKTINFO),
    socket.AF_INET6: (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO),
}


def open_reply_socket(family: socket.AddressFamily) -> socket.socket:
    """A raw UDP socket that sends a range's replies from any address and port (CAP_NET_RAW, at
    start-up). It queues no ICMP errors: nothing reads them, and a client's port unreachable only fails the
    next send once (tried again)."""
    sock = open_raw_socket(family)
    with contextlib.suppress(OSError):
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 0)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 0)
    return sock


class PortReplies:
    """Sends range flows' replies, each from the original destination its client used last (the flow's
    local address, a raw struct sockaddr), through `sockets` (one raw socket per family)."""

    def __init__(self, sockets: Iterable[socket.socket], *, checksum: bool) -> None:
        self._raw = RawSend(sockets, 1, checksum=checksum)
        self._parts: dict[tuple[bytes, bytes], RawFlow] = {}

    @property
    def sockets(self) -> list[socket.socket]:
        return self._raw.sockets

    def send(self, flow: Flow, payload: memoryview) -> int:
        """Send one reply to `flow`'s client from the address and port it sent to; 0, or the errno."""
        original = flow.local_address
        if not original:  # never told (its control messages were cut short): no reply from a guess
            return errno.EADDRNOTAVAIL
        key = (original, flow.raw_peer)
        parts = self._parts.get(key)
        if parts is None:
            family, source = reply_source(original)
            batch = self._raw.batches.get(family)
            address = plain_address(str(flow.peer[0]))
            # An IPv6 datagram with a v4-mapped source or destination puts the client and the address it
            # asked in two families: no reply can leave from one to the other.
            if batch is None or address.version != _VERSION[family]:
                return errno.EAFNOSUPPORT
            parts = RawFlow(batch, source, (str(address), int(flow.peer[1])))
            bounded_put(self._parts, key, parts, CACHE_SIZE)
        batch = parts.batch
        total = len(payload) + UDP_HEADER
        checksum = udp_checksum(parts.partial, total, payload) if batch.checksum else 0
        header = _HEADER.pack(parts.ports, total, checksum)
        control = [(*_PKTINFO[batch.family], parts.pktinfo)]
        try:
            batch.sock.sendmsg((header, payload), control, 0, parts.destination)
        except OSError:  # a client's ICMP error left on the socket fails one send: once more
            try:
                batch.sock.sendmsg((header, payload), control, 0, parts.destination)
            except OSError as error:
                return error.errno or errno.EIO
        return 0

    def close(self) -> None:
        self._raw.close()
