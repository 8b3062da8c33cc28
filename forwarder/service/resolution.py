"""Resolving a destination's host name once, at start-up, to one address per family."""

import ipaddress
import socket

from forwarder.core.addresses import family_of
from forwarder.core.destination import Destination, DestinationSpec
from forwarder.errors import ConfigurationError, UnknownHostError, UsageError, shown


def _shorthand_ipv4(host: str) -> str | None:
    """The address inet_aton(3) reads in `host` when it is a shorthand or legacy IPv4 form ('192.0.2' is
    192.0.0.2, '3221225986' is 192.0.2.2, '010.0.0.1' is 8.0.0.1), else None (a dotted quad or a name)."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


def lookup(spec: DestinationSpec, default_port: int) -> dict[socket.AddressFamily, Destination]:
    """Resolve `spec` once: its first address of each family, in the resolver's order.

    A v4-mapped IPv6 literal ([::ffff:192.0.2.2]) is the IPv4 destination it stands for. A shorthand IPv4
    form is refused as ambiguous (78): the resolver would silently read it as another address.
    """
    shorthand = _shorthand_ipv4(spec.host)
    if shorthand is not None:
        raise ConfigurationError(
            f"destination {shown(spec.text)} has the shorthand IPv4 address {shown(spec.host)}, which the "
            f"resolver reads as {shorthand}: expected four decimal numbers (such as {shorthand}) or a name"
        )
    port = spec.port if spec.port is not None else default_port
    try:
        infos = socket.getaddrinfo(spec.host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        infos = []
    found: dict[socket.AddressFamily, Destination] = {}
    link_local = False
    for info_family, _, _, _, sockaddr in infos:
        if info_family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif isinstance(address, ipaddress.IPv6Address) and address.is_link_local:
            link_local = True  # needs its interface on every send; backends have routable addresses
            continue
        family = family_of(address)
        found.setdefault(family, Destination(family, str(address), port))
    if not found and link_local:
        raise UsageError(
            f"destination {shown(spec.text)} is an IPv6 link-local address: expected a global or "
            "unique-local backend address"
        )
    if not found:
        raise UnknownHostError(f"cannot resolve host {shown(spec.host)} of destination {shown(spec.text)}")
    return found


def pick(found: dict[socket.AddressFamily, Destination], preferred: socket.AddressFamily) -> Destination:
    """The destination of the `preferred` family when there is one, else the resolver's first."""
    return found.get(preferred) or next(iter(found.values()))
