"""The listening sockets and the routes from each of them to its destination."""

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from forwarder.core.addresses import endpoint_text, plain_address
from forwarder.core.destination import Destination
from forwarder.core.flows import Path
from forwarder.core.ranges import Backends, PortMap


def address_text(sock: socket.socket) -> str:
    """The address a socket is bound to, as `192.0.2.1:53` or `[2001:db8::1]:53`."""
    return endpoint_text(sock.getsockname())


@dataclass(frozen=True, slots=True)
class ListeningSocket:
    """One inherited datagram socket, with the name systemd gave it (FileDescriptorName=); `named` is False
    when it gave none (systemd-socket-activate without --fdname sets no LISTEN_FDNAMES)."""

    sock: socket.socket
    name: str
    named: bool = True

    @property
    def family(self) -> socket.AddressFamily:
        return self.sock.family

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def label(self) -> str:
        """How logs and messages name the socket: its name, or its address when it has none."""
        return self.name if self.named else address_text(self.sock)


@dataclass(frozen=True, slots=True)
class Route:
    """Datagrams arriving on `listener` go to `destination`; `path` is how the machine knows the pair.
    With `pktinfo` (relay mode on a wildcard listener) each datagram's local address is read, so that the
    reply leaves from the address the client sent to. With `ports` the socket serves a port range (TPROXY):
    each datagram's Path is the one its original destination port maps to, and `path` stands for the
    listener (its drops, its replies' socket)."""

    listener: ListeningSocket
    destination: Destination
    pktinfo: bool = False
    ports: PortMap | None = None
    path: Path = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        bound = self.listener.sock.getsockname()
        listen = (str(plain_address(str(bound[0]))), int(bound[1]))
        object.__setattr__(self, "path", Path(self.listener.label, self.destination, listen))
        if self.ports is not None and self.ports.listen is None:
            self.ports.listen = listen


def backends_of(routes: Sequence[Route]) -> Backends:
    """Every route's backend (address, port), a range's whole backend range included."""
    return Backends(
        [route.destination.sockaddr for route in routes if route.ports is None],
        [
            (route.ports.backend.address, route.ports.backend_ports)
            for route in routes
            if route.ports is not None
        ],
    )
