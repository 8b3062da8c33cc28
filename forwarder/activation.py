"""Socket activation per sd_listen_fds(3): the sockets systemd (or systemd-socket-activate) passes us.

Only the standard library: LISTEN_PID must be ours, LISTEN_FDS counts fds from 3, LISTEN_FDNAMES names them.
"""

import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass

from forwarder.core import decimal
from forwarder.errors import ConfigurationError

SD_LISTEN_FDS_START = 3
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclass(frozen=True, slots=True)
class ListeningSocket:
    """One inherited datagram socket, with the name systemd gave it (FileDescriptorName=)."""

    sock: socket.socket
    name: str

    @property
    def family(self) -> socket.AddressFamily:
        return self.sock.family

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


def _adopt(fd: int, name: str) -> ListeningSocket:
    """Wrap fd as a socket after checking it is an AF_INET/AF_INET6 datagram socket."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as error:
        raise ConfigurationError(f"inherited fd {fd} ({name!r}) is not open: {error.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigurationError(f"inherited fd {fd} ({name!r}) is not a socket: expected a UDP socket")
    os.set_inheritable(fd, False)  # as sd_listen_fds(3) does: children must not inherit the sockets
    sock = socket.socket(fileno=fd)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        family = sock.family.name if isinstance(sock.family, socket.AddressFamily) else sock.family
        sock.detach()
        raise ConfigurationError(
            f"inherited fd {fd} ({name!r}) is an {family} socket: expected AF_INET or AF_INET6"
        )
    if sock.type != socket.SOCK_DGRAM:
        kind = sock.type.name if isinstance(sock.type, socket.SocketKind) else sock.type
        sock.detach()
        raise ConfigurationError(
            f"inherited fd {fd} ({name!r}) is a {kind} socket: expected SOCK_DGRAM (ListenDatagram=)"
        )
    if sock.proto != socket.IPPROTO_UDP:  # e.g. UDP-Lite or an ICMP "ping" socket: datagrams, not UDP
        protocol = sock.proto
        sock.detach()
        raise ConfigurationError(
            f"inherited fd {fd} ({name!r}) is a datagram socket of IP protocol {protocol}: expected UDP (17)"
        )
    sock.setblocking(False)
    return ListeningSocket(sock, name)


def listen_sockets(environ: MutableMapping[str, str], pid: int | None = None) -> list[ListeningSocket]:
    """Return the sockets passed by socket activation and remove the variables from `environ`.

    The variables are removed so that no child we might start believes the sockets are its own.
    """
    pid = os.getpid() if pid is None else pid
    listen_pid = environ.get("LISTEN_PID")
    listen_fds = environ.get("LISTEN_FDS")
    fd_names = environ.get("LISTEN_FDNAMES")
    for variable in _ACTIVATION_VARIABLES:
        environ.pop(variable, None)

    if listen_pid is None or listen_fds is None:
        raise ConfigurationError(
            "no systemd sockets received (LISTEN_PID/LISTEN_FDS unset): start me from a .socket unit, "
            "under systemd-socket-activate, or pass --listen ADDR:PORT"
        )
    if decimal(listen_pid) != pid:
        raise ConfigurationError(f"LISTEN_PID={listen_pid!r} is not our pid {pid}: the sockets are not ours")
    count = decimal(listen_fds)
    if count is None:
        raise ConfigurationError(f"LISTEN_FDS={listen_fds!r} is not a number: expected a count of sockets")
    if count == 0:
        raise ConfigurationError("no systemd sockets received (LISTEN_FDS=0)")

    names = fd_names.split(":") if fd_names else []
    if names and len(names) != count:
        raise ConfigurationError(
            f"LISTEN_FDNAMES={fd_names!r} names {len(names)} sockets but LISTEN_FDS={count}"
        )
    names = names or ["unknown"] * count
    return [_adopt(SD_LISTEN_FDS_START + index, names[index]) for index in range(count)]
