"""Parsing and resolving destinations: `host`, `host:port`, `[v6]`, `[v6]:port`, a bare IPv6 literal, and
the named form `NAME=DEST` that maps a socket by its FileDescriptorName= instead of by position.

Parsing is pure; resolution happens once at start-up, never per datagram.
"""

import ipaddress
import socket
from dataclasses import dataclass

from forwarder.core import decimal
from forwarder.errors import UnknownHostError, UsageError

_EXPECTED = "expected host, host:port, [ipv6], [ipv6]:port or NAME=one of those"


@dataclass(frozen=True, slots=True)
class DestinationSpec:
    """A destination as written on the command line, before name resolution."""

    text: str
    host: str
    port: int | None
    fd_name: str | None = None


@dataclass(frozen=True, slots=True)
class Destination:
    """A resolved destination: the family and the socket address datagrams are sent to."""

    family: socket.AddressFamily
    address: str
    port: int

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.address, self.port)

    def __str__(self) -> str:
        if self.family == socket.AF_INET6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


def parse_port(text: str, context: str) -> int:
    """Parse a UDP port number (1..65535); `context` is the whole argument, quoted in the error."""
    port = decimal(text)
    if port is None or not 1 <= port <= 65535:
        raise UsageError(f"bad port {text!r} in {context!r}: expected an integer from 1 to 65535")
    return port


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_destination(text: str) -> DestinationSpec:
    """Split one command-line destination into host, optional port and optional fd name."""
    fd_name: str | None = None
    body = text
    if "=" in text:
        fd_name, _, body = text.partition("=")
        if not fd_name:
            raise UsageError(f"empty socket name in {text!r}: {_EXPECTED}")
    if not body:
        raise UsageError(f"empty destination {text!r}: {_EXPECTED}")

    if body.startswith("["):
        inside, closing, rest = body[1:].partition("]")
        if not closing or not _is_ipv6(inside):
            raise UsageError(f"bad bracketed IPv6 address in {text!r}: {_EXPECTED}")
        if rest == "":
            return DestinationSpec(text, inside, None, fd_name)
        if not rest.startswith(":"):
            raise UsageError(f"unexpected {rest!r} after ']' in {text!r}: {_EXPECTED}")
        return DestinationSpec(text, inside, parse_port(rest[1:], text), fd_name)

    if body.count(":") >= 2:
        # A bare IPv6 literal has no port. Refuse one that could also be read as address:port.
        head, _, tail = body.rpartition(":")
        if _is_ipv6(head) and tail.isdigit():
            raise UsageError(
                f"ambiguous IPv6 destination {text!r}: write [{body}] for the address "
                f"or [{head}]:{tail} for address and port"
            )
        if not _is_ipv6(body):
            raise UsageError(f"bad IPv6 address {body!r} in {text!r}: {_EXPECTED}")
        return DestinationSpec(text, body, None, fd_name)

    host, colon, port_text = body.partition(":")
    if not host:
        raise UsageError(f"empty host in {text!r}: {_EXPECTED}")
    port = parse_port(port_text, text) if colon else None
    return DestinationSpec(text, host, port, fd_name)


def parse_listen(text: str) -> tuple[str, int]:
    """Parse a `--listen` address: `ADDR:PORT` or `[V6ADDR]:PORT`; the port is required."""
    expected = "expected ADDR:PORT or [IPV6]:PORT, e.g. 0.0.0.0:53 or [::]:53"
    if "=" in text:
        raise UsageError(f"bad --listen address {text!r}: {expected}")
    spec = parse_destination(text)
    if spec.port is None:
        raise UsageError(f"--listen address {text!r} has no port: {expected}")
    try:
        ipaddress.ip_address(spec.host)
    except ValueError:
        raise UsageError(f"--listen address {text!r} is not a numeric IP address: {expected}") from None
    return spec.host, spec.port


def resolve(spec: DestinationSpec, preferred: socket.AddressFamily, default_port: int) -> Destination:
    """Resolve `spec` once, preferring the listening socket's family and falling back to any family."""
    port = spec.port if spec.port is not None else default_port
    for family in (preferred, socket.AF_UNSPEC):
        try:
            infos = socket.getaddrinfo(spec.host, port, family, socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError):
            continue
        for info_family, _, _, _, sockaddr in infos:
            if info_family == socket.AF_INET6 and ipaddress.IPv6Address(str(sockaddr[0])).is_link_local:
                # A link-local address needs its interface on every send; backends have routable ones.
                raise UsageError(
                    f"destination {spec.text!r} is an IPv6 link-local address: expected a global or "
                    "unique-local backend address"
                )
            if info_family in (socket.AF_INET, socket.AF_INET6):
                return Destination(socket.AddressFamily(info_family), str(sockaddr[0]), port)
    raise UnknownHostError(f"cannot resolve host {spec.host!r} of destination {spec.text!r}")
