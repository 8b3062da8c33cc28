"""Addresses as the forwarder handles them, with no sockets: a plain address (no scope id, v4-mapped as
IPv4), the family of an address, the struct sockaddr codec (a raw sockaddr is a flow's key), the endpoint
text people read (`192.0.2.1:53`, `[2001:db8::1]:53`), the families a listener's clients can be presented
in, and whether a destination would loop back to a listener.
"""

import ipaddress
import socket
from collections.abc import Callable, Sequence

SockAddr = tuple[str, int] | tuple[str, int, int, int]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def plain_address(host: str) -> Address:
    """The address in `host`, without a scope id, and a v4-mapped IPv6 address as plain IPv4."""
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def decode_sockaddr(raw: bytes | memoryview) -> SockAddr:
    """A raw struct sockaddr_in / sockaddr_in6 (as recvmmsg writes it) as the tuple the socket module
    would give."""
    family = int.from_bytes(raw[0:2], "little")
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    flowinfo = int.from_bytes(raw[4:8], "big")
    scope = int.from_bytes(raw[24:28], "little")
    return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope)


def sockaddr_bytes(family: socket.AddressFamily, address: SockAddr) -> bytes:
    """The struct sockaddr_in / sockaddr_in6 for a socket-module address tuple: the inverse of
    decode_sockaddr (flow info and scope id included when given)."""
    port = int(address[1]).to_bytes(2, "big")
    host = str(address[0]).partition("%")[0]
    if family == socket.AF_INET:
        return socket.AF_INET.to_bytes(2, "little") + port + socket.inet_pton(socket.AF_INET, host) + bytes(8)
    flowinfo = int(address[2]) if len(address) > 2 else 0
    scope = int(address[3]) if len(address) > 3 else 0
    return (
        socket.AF_INET6.to_bytes(2, "little")
        + port
        + flowinfo.to_bytes(4, "big")
        + socket.inet_pton(socket.AF_INET6, host)
        + scope.to_bytes(4, "little")
    )


def served_families(
    listener_family: socket.AddressFamily, bound_address: str, v6only: bool
) -> frozenset[socket.AddressFamily]:
    """The destination families a listener's clients can be presented to.

    An IPv4 socket only has IPv4 clients; an IPv6 socket bound to `::` without IPV6_V6ONLY also has
    (v4-mapped) IPv4 clients; one bound to a v4-mapped address has only those.
    """
    if listener_family == socket.AF_INET:
        return frozenset({socket.AF_INET})
    address = ipaddress.IPv6Address(bound_address.partition("%")[0])
    if address.ipv4_mapped is not None:
        return frozenset({socket.AF_INET})
    if address == ipaddress.IPv6Address("::") and not v6only:
        return frozenset({socket.AF_INET6, socket.AF_INET})
    return frozenset({socket.AF_INET6})


def is_loop(
    destination: tuple[str, int],
    listener: tuple[str, int],
    listener_families: frozenset[socket.AddressFamily],
    is_local: Callable[[str], bool],
) -> bool:
    """True when datagrams sent to `destination` would arrive on `listener` (bound address, port).

    A wildcard listener (0.0.0.0 or ::) receives on every local address of the families it serves.
    """
    if destination[1] != listener[1]:
        return False
    target = plain_address(destination[0])
    bound = plain_address(listener[0])
    if target == bound:
        return True
    if not bound.is_unspecified:
        return False
    family = family_of(target)
    return family in listener_families and is_local(str(target))


def endpoint_text(address: Sequence[object]) -> str:
    """`(host, port)` or an IPv6 `(host, port, flowinfo, scope_id)` as `host:port` or `[host]:port` (a
    scope id, when there is one, as `[fe80::1%2]:53`)."""
    host, port = str(address[0]), address[1]
    if ":" not in host:
        return f"{host}:{port}"
    if len(address) > 3 and address[3] and "%" not in host:
        host = f"{host}%{address[3]}"
    return f"[{host}]:{port}"


def family_of(address: "str | Address") -> socket.AddressFamily:
    """The family of an address: AF_INET6 for IPv6 (text with a colon, or an IPv6Address), else AF_INET."""
    if isinstance(address, str):
        return socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET
