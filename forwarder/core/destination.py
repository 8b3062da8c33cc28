"""Parsing and resolving destinations: `host`, `host:port`, `[v6]`, `[v6]:port`, a bare IPv6 literal, and
the named form `NAME=DEST` that maps a socket by its FileDescriptorName= instead of by position. A
destination may name the port range its (TPROXY) socket serves before `@`: `FIRST-LAST@HOST` (each port to
the same port), `FIRST-LAST@HOST:PORT` (all to one port), `FIRST-LAST@HOST:BFIRST-BLAST` (by offset).

Parsing is pure; resolution happens once at start-up, never per datagram.
"""

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from forwarder.core.addresses import LIMITED_BROADCAST, endpoint_text
from forwarder.errors import ConfigurationError, UsageError, shown

_EXPECTED = "expected host, host:port, [ipv6], [ipv6]:port or NAME=one of those"
_RANGED = "expected [NAME=]FIRST-LAST@HOST[:PORT|:BFIRST-BLAST], e.g. 27000-27050@192.0.2.2"


@dataclass(frozen=True, slots=True)
class PortRange:
    """The ports FIRST..LAST, both included (1 <= FIRST <= LAST <= 65535)."""

    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class DestinationSpec:
    """A destination as written on the command line, before name resolution."""

    text: str
    host: str
    port: int | None
    fd_name: str | None = None
    # The ports the socket serves (`FIRST-LAST@`), and the backend's range they map to by offset
    # (`:BFIRST-BLAST`); None for a plain destination, and for the same ports or one `port`.
    ports: PortRange | None = None
    backend_ports: PortRange | None = None


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


def parse_port_range(text: str, context: str) -> PortRange:
    """Parse `FIRST-LAST` (ports 1..65535, FIRST <= LAST); `context` is the whole argument, quoted in the
    error."""
    first_text, dash, last_text = text.partition("-")
    if not dash or not first_text or not last_text:
        raise UsageError(
            f"bad port range {shown(text)} in {shown(context)}: expected FIRST-LAST with both ports, e.g. "
            "27000-27050"
        )
    ports = []
    for port_text in (first_text, last_text):
        port = decimal(port_text)
        if port is None or not 1 <= port <= 65535:
            raise UsageError(
                f"bad port {shown(port_text)} in port range {shown(text)} of {shown(context)}: expected an "
                "integer from 1 to 65535"
            )
        ports.append(port)
    first, last = ports
    if first > last:
        raise UsageError(
            f"bad port range {shown(text)} in {shown(context)}: its first port is above its last; expected "
            "FIRST-LAST with FIRST <= LAST"
        )
    return PortRange(first, last)


def _is_port_range(text: str) -> bool:
    """Whether `text` looks like FIRST-LAST (digits, a dash, digits), as a plain destination never does."""
    first, dash, last = text.partition("-")
    return bool(dash) and first.isdigit() and last.isdigit()


def parse_destination(text: str) -> DestinationSpec:
    """Split one command-line destination into host, optional port (or port range) and optional fd name,
    and the port range its socket serves (`FIRST-LAST@`)."""
    fd_name: str | None = None
    body = text
    if "=" in text:
        # A destination never contains '=', a socket name may (systemd allows it): split at the last one.
        fd_name, _, body = text.rpartition("=")
        if not fd_name:
            raise UsageError(f"empty socket name in {shown(text)}: expected NAME=DEST with a NAME, or a DEST")
    if not body:
        raise UsageError(f"empty destination {shown(text)}: {_EXPECTED}")
    if "@" not in body:
        if _is_port_range(body):
            raise UsageError(f"port range {shown(body)} without @HOST in {shown(text)}: {_RANGED}")
        spec = _parse_plain(text, body, fd_name)
        if spec.backend_ports is not None:
            raise UsageError(
                f"backend port range {spec.backend_ports} in {shown(text)} without the range its socket "
                f"serves before '@': {_RANGED}"
            )
        return spec
    ports_text, _, body = body.partition("@")
    if "@" in body:
        raise UsageError(f"two '@' in {shown(text)}: {_RANGED}")
    if not ports_text:
        raise UsageError(f"no port range before '@' in {shown(text)}: {_RANGED}")
    if "-" not in ports_text:
        raise UsageError(f"{shown(ports_text)} before '@' in {shown(text)} is no port range: {_RANGED}")
    ports = parse_port_range(ports_text, text)
    if not body:
        raise UsageError(f"no host after '@' in {shown(text)}: {_RANGED}")
    spec = _parse_plain(text, body, fd_name)
    backend = spec.backend_ports
    if backend is not None and backend.size != ports.size:
        raise UsageError(
            f"port ranges of different lengths in {shown(text)}: {ports} has {ports.size} ports, {backend} "
            f"has {backend.size}; expected ranges of the same length, or one backend port"
        )
    return DestinationSpec(text, spec.host, spec.port, fd_name, ports, backend)


def _parse_port_or_range(text: str, context: str) -> tuple[int | None, PortRange | None]:
    """A destination's `:PORT`, or its `:BFIRST-BLAST` (the backend's side of a port range)."""
    if "-" in text[1:]:  # '-1' is a bad port, not a range
        return None, parse_port_range(text, context)
    return parse_port(text, context), None


def _parse_plain(text: str, body: str, fd_name: str | None) -> DestinationSpec:
    """The host and port (or backend port range) of `body`, the destination after any NAME= and range@."""

    if body.startswith("["):
        inside, closing, rest = body[1:].partition("]")
        if not closing or not _is_ipv6(inside):
            raise UsageError(f"bad bracketed IPv6 address in {shown(text)}: {_EXPECTED}")
        if rest == "":
            return DestinationSpec(text, inside, None, fd_name)
        if not rest.startswith(":"):
            raise UsageError(f"unexpected {shown(rest)} after ']' in {shown(text)}: {_EXPECTED}")
        port, backend = _parse_port_or_range(rest[1:], text)
        return DestinationSpec(text, inside, port, fd_name, backend_ports=backend)

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
    port, backend = _parse_port_or_range(port_text, text) if colon else (None, None)
    return DestinationSpec(text, host, port, fd_name, backend_ports=backend)


def parse_listen(text: str) -> tuple[str, int]:
    """Parse a `--listen` address: `ADDR:PORT` or `[V6ADDR]:PORT`; the port is required."""
    expected = "expected ADDR:PORT or [IPV6]:PORT, e.g. 0.0.0.0:53 or [::]:53"
    if "=" in text or "@" in text:
        raise UsageError(f"bad --listen address {shown(text)}: {expected}")
    spec = parse_destination(text)
    if spec.backend_ports is not None:
        raise UsageError(f"bad --listen address {shown(text)}: {expected} (the range is the destination's)")
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
