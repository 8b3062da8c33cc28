"""Which source a client is presented with, or why it cannot be; what the PROXY header of a flow says; the
probes the machine asks about this host's addresses.
"""

import socket
from collections.abc import Callable
from typing import Protocol

from forwarder.core.addresses import LIMITED_BROADCAST, SockAddr, family_of, plain_address
from forwarder.core.counters import DropReason
from forwarder.core.flows import Path
from forwarder.core.proxy_protocol import build


def presentable_source(
    client: SockAddr,
    destination_family: socket.AddressFamily,
    is_broadcast: Callable[[str], bool] | None = None,
) -> tuple[str, int] | DropReason:
    """The (address, port) to bind to so the backend sees `client`, or why that cannot be done.

    A v4-mapped IPv6 client (from a dual-stack listener) is presented as plain IPv4 to an IPv4 backend.
    Source port 0 is legal on the wire but cannot be bound (the kernel would pick another port). The
    unspecified address, broadcast and multicast addresses can be bound, but then the kernel picks the
    source (the host's own address): they are dropped before any bind. `is_broadcast` tells whether an IPv4
    address is the directed broadcast of one of the host's subnets (the limited broadcast always is).
    """
    if int(client[1]) == 0:
        return DropReason.ZERO_PORT
    address = plain_address(str(client[0]))
    wanted = 4 if destination_family == socket.AF_INET else 6
    if address.version != wanted:
        return DropReason.FAMILY_MISMATCH
    if address.is_unspecified:
        return DropReason.UNSPECIFIED_SOURCE
    if address.is_multicast:
        return DropReason.MULTICAST_SOURCE
    if address == LIMITED_BROADCAST or (address.version == 4 and is_broadcast and is_broadcast(str(address))):
        return DropReason.BROADCAST_SOURCE
    if address.is_loopback:
        return DropReason.LOOPBACK_SOURCE
    if address.version == 6 and address.is_link_local:  # valid on the client's link only, not the backend's
        return DropReason.LINK_LOCAL_SOURCE
    return (str(address), int(client[1]))


class LocalProbe(Protocol):
    """Answers "is this address one of this host's?"; `forget` drops cached answers (addresses change)."""

    def __call__(self, address: str) -> bool: ...

    def forget(self) -> None: ...


# Sources that cannot be bound (so the transparent modes drop them) but can be named in a header.
_NAMEABLE = (DropReason.LOOPBACK_SOURCE, DropReason.LINK_LOCAL_SOURCE)


def _proxy_header(
    source: tuple[str, int],
    local: bytes | None,
    path: Path,
    source_toward: Callable[[str], str | None] | None,
) -> bytearray | None:
    """The PROXY header of a flow presenting `source`: its destination is the address the client sent
    to (`local`, from IP_PKTINFO, a v4-mapped one as IPv4), else the listening socket's address (for a
    wildcard one, the host's address toward the client); both with the listening socket's port. None when
    the two cannot share one header."""
    if path.listen is None:
        return None
    host, port = path.listen
    # A datagram queued before IP_PKTINFO was set (the one that activated the service) has pktinfo too,
    # but an unspecified address in it.
    if local is not None and any(local):
        host = socket.inet_ntop(socket.AF_INET6 if len(local) == 16 else socket.AF_INET, local)
    if source_toward is not None and plain_address(host).is_unspecified:
        host = source_toward(source[0]) or host
    destination = str(plain_address(host))
    if family_of(destination) != family_of(source[0]):
        return None
    return bytearray(build(source, (destination, port)))


class _NothingLocal:
    """The probe of a machine told nothing: no address is local (or a broadcast address)."""

    def __call__(self, address: str) -> bool:
        return False

    def forget(self) -> None:
        pass
