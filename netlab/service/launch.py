"""What a forwarder's command line declares about tproxy, read the way the forwarder reads it: destinations
serving a port range on one socket (`[NAME=]FIRST-LAST@HOST[:PORT|:BFIRST-BLAST]`), the reply socket's port
(`--reply-tproxy PORT`), and which listening socket (its address and port) each destination serves, from
the forwarder's `--listen` or the `-l`/`--fdname` of the systemd-socket-activate that started it.

The doctor judges a deployment from these (a forwarder still waiting for its first datagram included), and
the scenario loader checks the addresses they name. Destinations are read with the forwarder's own parser
(forwarder.core.destination); malformed forms are left to the forwarder, which refuses them with exit 64:
here they are simply not ranges.
"""

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from netlab.addresses import split_host_port

REPLY_TPROXY = "--reply-tproxy"


@dataclass(frozen=True)
class RangeDestination:
    """A destination serving the ports FIRST-LAST clients send to; the backend answers from
    `backend_first`-`backend_last` (the same ports when the destination names none)."""

    text: str
    name: str | None
    first: int
    last: int
    host: str
    backend_first: int
    backend_last: int

    @property
    def ports(self) -> tuple[int, int]:
        return self.first, self.last


def _port(text: str) -> int | None:
    value = int(text)
    return value if 0 < value < 65536 else None


def parse_range_destination(text: str) -> RangeDestination | None:
    """The range a destination serves, read with the forwarder's own parser; None for a plain DEST (or a
    malformed one: the forwarder's to refuse, with exit 64)."""
    from forwarder.core.destination import parse_destination
    from forwarder.errors import ForwarderError

    try:
        spec = parse_destination(text)
    except ForwarderError:
        return None
    if spec.ports is None:
        return None
    first, last = spec.ports.first, spec.ports.last
    if spec.backend_ports is not None:
        backend = (spec.backend_ports.first, spec.backend_ports.last)
    else:
        backend = (spec.port, spec.port) if spec.port is not None else (first, last)
    return RangeDestination(text, spec.fd_name, first, last, spec.host, *backend)


def _option_values(argv: Sequence[str], *names: str) -> list[str]:
    """Every value of the options `names` (`--opt VALUE`, `--opt=VALUE`, `-o VALUE`), in order."""
    values = []
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                values.append(argv[index + 1])
            elif name.startswith("--") and arg.startswith(name + "="):
                values.append(arg[len(name) + 1 :])
    return values


def reply_tproxy_port(argv: Sequence[str]) -> int | None:
    """The port of `--reply-tproxy PORT` (the last one given), None without it or with a bad value."""
    values = _option_values(argv, REPLY_TPROXY)
    if not values or not values[-1].isdigit():
        return None
    return _port(values[-1])


def _without_reply_tproxy(argv: Sequence[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == REPLY_TPROXY:
            skip = True
        elif not arg.startswith(REPLY_TPROXY + "="):
            kept.append(arg)
    return kept


def destinations_of(arguments: Sequence[str]) -> list[str]:
    """The DEST arguments of the forwarder's `arguments` (its command line after the program), read with the
    forwarder's own parser; [] when it refuses them."""
    from forwarder.errors import ForwarderError
    from forwarder.service.options import build_parser

    try:
        # --reply-tproxy is set aside first, so that a checkout whose forwarder lacks it still reads the rest
        parsed, _ = build_parser().parse_known_args(_without_reply_tproxy(arguments))
    except (ForwarderError, SystemExit):
        return []
    return list(parsed.destinations)


@dataclass(frozen=True)
class ListenSocket:
    """A listening socket as a command line declares it: address (a wildcard one too) and port; `name` is
    its FileDescriptorName= (--fdname)."""

    address: str
    port: int
    name: str | None = None

    @property
    def versions(self) -> set[int]:
        """The address families of its clients: `[::]` takes both (dual-stack, as systemd binds it)."""
        address = ipaddress.ip_address(self.address)
        if address.version == 6 and address.is_unspecified:
            return {4, 6}
        return {address.version}


def _listen_socket(text: str, name: str | None) -> ListenSocket | None:
    if text.isdigit():  # systemd-socket-activate -l PORT: a dual-stack [::] socket
        port = _port(text)
        return ListenSocket("::", port, name) if port else None
    host, port_text = split_host_port(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    port = _port(port_text) if port_text.isdigit() else None
    return ListenSocket(host, port, name) if port else None


def listen_sockets(activator: Sequence[str], arguments: Sequence[str]) -> list[ListenSocket]:
    """The forwarder's sockets in LISTEN_FDS order: its own `--listen`s, else the activator's `-l`s (with
    the names of its `--fdname=A:B`); [] when neither says (sockets held by PID 1 or the lab)."""
    own = _option_values(arguments, "--listen")
    if own:
        texts, names = own, []
    else:
        texts = _option_values(activator, "-l", "--listen")
        fdnames = _option_values(activator, "--fdname")
        names = fdnames[-1].split(":") if fdnames else []
    found = []
    for index, text in enumerate(texts):
        sock = _listen_socket(text, names[index] if index < len(names) else None)
        if sock is not None:
            found.append(sock)
    return found if len(found) == len(texts) else []


@dataclass(frozen=True)
class RangeListener:
    """A range destination and the socket serving it (None when the command line does not say which)."""

    destination: RangeDestination
    socket: ListenSocket | None


def range_listeners(activator: Sequence[str], arguments: Sequence[str]) -> list[RangeListener]:
    """Every range destination of a forwarder command line with its socket: by position, or by NAME=."""
    destinations = destinations_of(arguments)
    sockets = listen_sockets(activator, arguments)
    by_name = {sock.name: sock for sock in sockets if sock.name}
    found = []
    for index, text in enumerate(destinations):
        destination = parse_range_destination(text)
        if destination is None:
            continue
        if destination.name is not None:
            sock = by_name.get(destination.name)
        else:
            sock = sockets[index] if index < len(sockets) else None
        found.append(RangeListener(destination, sock))
    return found


__all__ = [
    "ListenSocket",
    "RangeDestination",
    "RangeListener",
    "destinations_of",
    "listen_sockets",
    "parse_range_destination",
    "range_listeners",
    "reply_tproxy_port",
]
