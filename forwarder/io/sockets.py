"""Small socket helpers around the core: IP_TRANSPARENT, whether an address is local to this host, the
family of clients a listening socket can have, and binding `--listen` sockets ourselves.
"""

import errno
import ipaddress
import socket
from collections.abc import Callable

from forwarder.core.addresses import family_of, served_families
from forwarder.core.flows import bounded_put
from forwarder.errors import MissingPermissionError, OperatingSystemError
from forwarder.io.linux import (
    IP_PKTINFO,
    IP_RECVERR,
    IP_RECVORIGDSTADDR,
    IP_TRANSPARENT,
    IPV6_RECVERR,
    IPV6_RECVORIGDSTADDR,
    IPV6_TRANSPARENT,
    SO_RCVBUFFORCE,
)
from forwarder.io.listeners import ListeningSocket

LOCAL_CACHE_SIZE = 1024

# IP_TRANSPARENT: the kernel accepts CAP_NET_RAW or CAP_NET_ADMIN; the units grant the narrower one.
CAPABILITY_HINT = (
    "neither CAP_NET_RAW nor CAP_NET_ADMIN is held; grant "
    "AmbientCapabilities=CAP_NET_RAW and CapabilityBoundingSet=CAP_NET_RAW in the service unit "
    "(or run as root)"
)


def set_transparent(sock: socket.socket) -> None:
    """Allow `sock` to bind to a non-local (client) address; needs CAP_NET_RAW or CAP_NET_ADMIN."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)


def set_receive_errors(sock: socket.socket) -> None:
    """Queue ICMP errors about this socket's datagrams (read with MSG_ERRQUEUE), even when unconnected."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)


def is_wildcard(sock: socket.socket) -> bool:
    """True for a socket bound to 0.0.0.0 or :: (it receives on every local address)."""
    return ipaddress.ip_address(str(sock.getsockname()[0]).partition("%")[0]).is_unspecified


def set_receive_pktinfo(sock: socket.socket) -> None:
    """Have every datagram tell the local address it was sent to (IP_PKTINFO / IPV6_RECVPKTINFO; an IPv6
    socket also tells it, v4-mapped, for IPv4 clients of a dual-stack socket)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def set_receive_origdst(sock: socket.socket) -> None:
    """Have every datagram tell the address and port it was sent to before a tproxy rule steered it here
    (IP_ORIGDSTADDR; on an IPv6 socket IPV6_ORIGDSTADDR too: a dual-stack socket's IPv4 datagrams carry
    the IPv4 message)."""
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVORIGDSTADDR, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)


def check_transparent_capability(families: set[socket.AddressFamily]) -> None:
    """Fail at once, with the fix, if IP_TRANSPARENT cannot be set for any of `families`."""
    for family in sorted(families):
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                set_transparent(probe)
            except PermissionError:
                raise MissingPermissionError(
                    f"cannot set IP_TRANSPARENT (CAP_NET_RAW or CAP_NET_ADMIN allows it): {CAPABILITY_HINT}"
                ) from None


def probe_local(address: str) -> bool:
    """True when `address` belongs to this host (in our network namespace).

    A plain bind to (address, 0) without IP_TRANSPARENT succeeds only for a local address (assuming
    net.ipv4.ip_nonlocal_bind and net.ipv6.ip_nonlocal_bind are 0, their default).
    """
    family = family_of(address)
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def source_toward(address: str) -> str | None:
    """The address this host sends from to `address` (a connect()ed UDP socket's name: no datagram is
    sent), or None when there is no route. It stands in for the address a client sent to when IP_PKTINFO
    could not tell it: a datagram queued before the option was set (the one that activated the service)."""
    family = family_of(address)
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


def probe_broadcast(address: str) -> bool:
    """True when the IPv4 `address` is a broadcast address for this host: the limited broadcast or the
    directed broadcast of one of its subnets (in our network namespace).

    The kernel refuses to connect() a UDP socket without SO_BROADCAST to a destination whose route is a
    broadcast one (EACCES), and connects to any other address (or fails for another reason). Unlike a
    bind, which also succeeds for a broadcast address, this tells the two apart.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))
        except PermissionError:
            return True
        except OSError:
            return False
    return False


class _Answers:
    """One probe per address, from a bounded cache that `forget()` empties so changes are seen again."""

    def __init__(self, probe: Callable[[str], bool], when_in_doubt: bool, capacity: int) -> None:
        self.probe = probe
        self.when_in_doubt = when_in_doubt
        self.capacity = capacity
        self._answers: dict[str, bool] = {}

    def __call__(self, address: str) -> bool:
        answer = self._answers.get(address)
        if answer is None:
            try:
                answer = self.probe(address)
            except OSError:
                answer = self.when_in_doubt
            bounded_put(self._answers, address, answer, self.capacity)
        return answer

    def forget(self) -> None:
        """Drop the answers, so addresses added to or removed from the host are seen again."""
        self._answers.clear()


class LocalAddresses(_Answers):
    """Answers "is this source address local?" with one probe per address, from a bounded cache."""

    def __init__(self, capacity: int = LOCAL_CACHE_SIZE) -> None:
        # When in doubt, treat it as local: never keep a socket for it.
        super().__init__(probe_local, True, capacity)


class BroadcastAddresses(_Answers):
    """Answers "is this IPv4 address a broadcast address of this host?" (the directed broadcast of one of
    its subnets) with one probe per address, from a bounded cache refreshed like LocalAddresses."""

    def __init__(self, capacity: int = LOCAL_CACHE_SIZE) -> None:
        super().__init__(probe_broadcast, False, capacity)


def listener_families(listener: ListeningSocket) -> frozenset[socket.AddressFamily]:
    """The destination families the clients of `listener` can be presented to."""
    bound = str(listener.sock.getsockname()[0])
    v6only = False
    if listener.family == socket.AF_INET6:
        v6only = bool(listener.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    return served_families(listener.family, bound, v6only)


def bind_listener(host: str, port: int, text: str) -> ListeningSocket:
    """Bind a non-blocking UDP socket to host:port for `--listen`; `[::]` is dual-stack."""
    family = family_of(host)
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # No SO_REUSEADDR: an address and port another program holds must fail here (exit 71), and none
        # may share ours later. A flow socket bound to a client's address on this port gets in by
        # sharing_port (forwarder.io.flow_sockets).
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OperatingSystemError(f"cannot listen on {text!r}: {error.strerror}") from None
    sock.setblocking(False)
    return ListeningSocket(sock, text)


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Size the kernel receive queue of a socket: SO_RCVBUFFORCE (CAP_NET_ADMIN, when held) ignores
    net.core.rmem_max; without the capability (the units grant only CAP_NET_RAW) SO_RCVBUF applies,
    capped by it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
