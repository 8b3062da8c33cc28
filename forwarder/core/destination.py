"""Parsing and resolving destinations: `host`, `host:port`, `[v6]`, `[v6]:port`, a bare IPv6 literal, and
the named form `NAME=DEST` that maps a socket by its FileDescriptorName= instead of by position.

Parsing is pure; resolution happens once at start-up, never per datagram.
"""

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from forwarder.core.addresses import LIMITED_BROADCAST, endpoint_text
from forwarder.errors import ConfigurationError, UsageError, shown

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
        return endpoint_text(self.sockaddr)


def parse_port(text: str, context: str) -> int:
    """Parse a UDP port number (1..65535); `context` is the whole argument, quoted in the error."""
    port = decimal(text)
    if port is None or not 1 <= port <= 65535:
        raise UsageError(f"bad port {shown(text)} in {shown(context)}: expected an integer from 1 to 65535")
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
        # A destination never contains '=', a socket name may (systemd allows it): split at the last one.
        fd_name, _, body = text.rpartition("=")
        if not fd_name:
            raise UsageError(f"empty socket name in {shown(text)}: expected NAME=DEST with a NAME, or a DEST")
    if not body:
        raise UsageError(f"empty destination {shown(text)}: {_EXPECTED}")

    if body.startswith("["):
        inside, closing, rest = body[1:].partition("]")
        if not closing or not _is_ipv6(inside):
            raise UsageError(f"bad bracketed IPv6 address in {shown(text)}: {_EXPECTED}")
        if rest == "":
            return DestinationSpec(text, inside, None, fd_name)
        if not rest.startswith(":"):
            raise UsageError(f"unexpected {shown(rest)} after ']' in {shown(text)}: {_EXPECTED}")
        return DestinationSpec(text, inside, parse_port(rest[1:], text), fd_name)

    if body.count(":") >= 2:
        # A bare IPv6 literal has no port. Refuse one that could also be read as address:port.
        head, _, tail = body.rpartition(":")
        if _is_ipv6(head) and tail.isdigit():
            raise UsageError(
                f"ambiguous IPv6 destination {shown(text)}: write [{body}] for the address "
                f"or [{head}]:{tail} for address and port"
            )
        if not _is_ipv6(body):
            raise UsageError(f"bad IPv6 address {shown(body)} in {shown(text)}: {_EXPECTED}")
        return DestinationSpec(text, body, None, fd_name)

    host, colon, port_text = body.partition(":")
    if not host:
        raise UsageError(f"empty host in {shown(text)}: {_EXPECTED}")
    port = parse_port(port_text, text) if colon else None
    return DestinationSpec(text, host, port, fd_name)


def parse_listen(text: str) -> tuple[str, int]:
    """Parse a `--listen` address: `ADDR:PORT` or `[V6ADDR]:PORT`; the port is required."""
    expected = "expected ADDR:PORT or [IPV6]:PORT, e.g. 0.0.0.0:53 or [::]:53"
    if "=" in text:
        raise UsageError(f"bad --listen address {shown(text)}: {expected}")
    spec = parse_destination(text)
    if spec.port is None:
        raise UsageError(f"--listen address {shown(text)} has no port: {expected}")
    try:
        ipaddress.ip_address(spec.host)
    except ValueError:
        raise UsageError(f"--listen address {shown(text)} is not a numeric IP address: {expected}") from None
    return spec.host, spec.port


def check_destination(
    spec: DestinationSpec, destination: Destination, is_broadcast: Callable[[str], bool]
) -> None:
    """Refuse a destination no datagram can usefully be sent to as a client: the unspecified address (the
    kernel would send it to this host), broadcast (`is_broadcast`: a directed broadcast of a local subnet)
    and multicast (one link's group, chosen by whichever route comes first), each a configuration error."""
    address = ipaddress.ip_address(destination.address)
    if address.is_unspecified:
        what = "the unspecified address"
    elif address.is_multicast:
        what = "a multicast address"
    elif address == LIMITED_BROADCAST:
        what = "the limited broadcast address"
    elif address.version == 4 and is_broadcast(str(address)):
        what = "the broadcast address of one of this host's subnets"
    else:
        return
    raise ConfigurationError(
        f"destination {shown(spec.text)} ({destination}) is {what}: expected the unicast address of a backend"
    )


def decimal(text: str) -> int | None:
    """The value of `text` when it is a plain decimal number in ASCII digits, as systemd and users write
    them, else None. Unlike int() it refuses '²' (a digit to str.isdigit, not to int), ' 1', '+1', '1_0',
    and numbers with more digits than int() converts (sys.get_int_max_str_digits)."""
    if not (text.isascii() and text.isdigit()):
        return None
    try:
        return int(text)
    except ValueError:
        return None
