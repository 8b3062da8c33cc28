"""Sending one datagram as the client: from a per-flow transparent socket bound to the client's address.

Per-flow sockets are kept between datagrams (a hit is one dict lookup) and stay **unconnected**: a
connect()ed transparent socket bound to the client's address would match the backend's reply to that client
in UDP early demux, and the host would drop the reply instead of forwarding it. They are never kept for a
source address local to this host (another program must stay free to bind that port and get its replies):
those go out from a one-shot socket.
"""

import errno
import socket
from collections.abc import Callable

from forwarder.batch import decode_sockaddr
from forwarder.core import DropReason, FlowTable, SockAddr, presentable_source
from forwarder.destination import Destination
from forwarder.sockets import BroadcastAddresses, LocalAddresses, set_transparent

DEFAULT_MAX_FLOWS = 4096
DEFAULT_IDLE_TIMEOUT = 60.0

# (destination, client): the client as a sockaddr tuple, or as raw sockaddr bytes on the batched path.
FlowKey = tuple[tuple[str, int], SockAddr | bytes]
# What a send reports: None when forwarded, else the reason and errno name.
Outcome = tuple[DropReason, str] | None


def errno_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, str(error.errno))


class Sender:
    """Forwards datagrams to destinations with the client's address as their source."""

    def __init__(
        self,
        max_flows: int = DEFAULT_MAX_FLOWS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        is_local: Callable[[str], bool] | None = None,
        is_broadcast: Callable[[str], bool] | None = None,
    ) -> None:
        self.flows: FlowTable[FlowKey, socket.socket] = FlowTable(max_flows, idle_timeout)
        self.is_local = is_local if is_local is not None else LocalAddresses()
        self.is_broadcast = is_broadcast if is_broadcast is not None else BroadcastAddresses()

    def send(self, payload: memoryview, client: SockAddr, destination: Destination, now: float) -> Outcome:
        """Send `payload` to `destination` as if from `client`; return why not, or None when sent."""
        return self._send(payload, (destination.sockaddr, client), client, destination, now)

    def send_raw(self, payload: memoryview, raw: bytes, destination: Destination, now: float) -> Outcome:
        """Like send(), for a client given as the raw sockaddr recvmmsg wrote: that is also the flow key,
        so the address is decoded only when a flow is opened."""
        return self._send(payload, (destination.sockaddr, raw), raw, destination, now)

    def _send(
        self,
        payload: memoryview,
        key: FlowKey,
        client: SockAddr | bytes,
        destination: Destination,
        now: float,
    ) -> Outcome:
        target = destination.sockaddr
        sock = self.flows.get(key, now)
        if sock is None:
            if isinstance(client, bytes):
                client = decode_sockaddr(client)
            source = presentable_source(client, destination.family, self.is_broadcast)
            if isinstance(source, DropReason):
                return (source, "")
            if self.is_local(source[0]):
                return self._send_once(payload, source, destination)
            try:
                sock = self._open_flow(source, destination.family)
            except OSError as error:
                return (DropReason.SEND_ERROR, errno_name(error))
            for old in self.flows.add(key, sock, now):
                old.close()
        try:
            sock.sendto(payload, target)
        except OSError as error:
            return (DropReason.SEND_ERROR, errno_name(error))
        return None

    @staticmethod
    def _open_flow(source: tuple[str, int], family: socket.AddressFamily) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            set_transparent(sock)
            # Two flows of one client (to two destinations) share its source address and port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(source)
        except OSError:
            sock.close()
            raise
        return sock

    @staticmethod
    def _send_once(payload: memoryview, source: tuple[str, int], destination: Destination) -> Outcome:
        """A local source: bind, send, close. EADDRINUSE (a local program holds the port) and EINVAL (the
        kernel refuses that source) are drops of their own kind; nothing is kept."""
        try:
            with socket.socket(destination.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sock:
                set_transparent(sock)
                sock.bind(source)
                sock.sendto(payload, destination.sockaddr)
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EINVAL):
                return (DropReason.LOCAL_SOURCE, errno_name(error))
            return (DropReason.SEND_ERROR, errno_name(error))
        return None

    def expire(self, now: float) -> int:
        """Close flows idle for longer than the idle timeout, and flows whose source address has become
        local to this host (or a broadcast address of it) since they were opened; return how many."""
        stale = self.flows.expire(now)
        for answers in (self.is_local, self.is_broadcast):
            if isinstance(answers, LocalAddresses | BroadcastAddresses):
                answers.forget()
        for key in self.flows:
            client = decode_sockaddr(key[1]) if isinstance(key[1], bytes) else key[1]
            family = socket.AF_INET6 if ":" in key[0][0] else socket.AF_INET
            source = presentable_source(client, family, self.is_broadcast)
            if isinstance(source, DropReason) or self.is_local(source[0]):
                removed = self.flows.remove(key)
                if removed is not None:
                    stale.append(removed)
        for sock in stale:
            sock.close()
        return len(stale)

    def close(self) -> None:
        for sock in self.flows.clear():
            sock.close()
