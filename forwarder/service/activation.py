"""Socket activation per sd_listen_fds(3): the sockets systemd (or systemd-socket-activate) passes us.

Only the standard library: LISTEN_PID must be ours, LISTEN_FDS counts fds from 3, LISTEN_FDNAMES names them.
"""

import os
import socket
import stat
from collections.abc import MutableMapping

from forwarder.core.destination import decimal
from forwarder.errors import ConfigurationError, shown
from forwarder.io.listeners import ListeningSocket

SD_LISTEN_FDS_START = 3
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


UNNAMED = "unknown"  # the name sd_listen_fds_with_names(3) reports when LISTEN_FDNAMES gives none


def _adopt(fd: int, name: str, named: bool) -> ListeningSocket:
    """Wrap fd as a socket after checking it is a bound AF_INET/AF_INET6 UDP socket."""
    which = f"inherited fd {fd} ({shown(name)})" if named else f"inherited fd {fd}"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as error:
        raise ConfigurationError(f"{which} is not open: {error.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigurationError(f"{which} is not a socket: expected a UDP socket")
    os.set_inheritable(fd, False)  # as sd_listen_fds(3) does: children must not inherit the sockets
    sock = socket.socket(fileno=fd)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        family = sock.family.name if isinstance(sock.family, socket.AddressFamily) else sock.family
        sock.detach()
        raise ConfigurationError(f"{which} is an {family} socket: expected AF_INET or AF_INET6")
    if sock.type != socket.SOCK_DGRAM:
        kind = sock.type.name if isinstance(sock.type, socket.SocketKind) else sock.type
        sock.detach()
        raise ConfigurationError(f"{which} is a {kind} socket: expected SOCK_DGRAM (ListenDatagram=)")
    if sock.proto != socket.IPPROTO_UDP:  # e.g. UDP-Lite or an ICMP "ping" socket: datagrams, not UDP
        protocol = sock.proto
        sock.detach()
        raise ConfigurationError(f"{which} is a datagram socket of IP protocol {protocol}: expected UDP (17)")
    if sock.getsockname()[1] == 0:  # never bound: it would receive nothing, and logs would say port 0
        sock.detach()
        raise ConfigurationError(f"{which} is a UDP socket bound to no port: expected a listening socket")
    sock.setblocking(False)
    return ListeningSocket(sock, name, named)


def listen_sockets(environ: MutableMapping[str, str], pid: int | None = None) -> list[ListeningSocket]:
    """Return the sockets passed by socket activation and remove the variables from `environ`.

    The variables are removed so that no child we might start believes the sockets are its own. A socket
    without a name is labelled by its address in logs; without LISTEN_FDNAMES every socket is called
    'unknown', as sd_listen_fds_with_names(3) does.
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
        raise ConfigurationError(
            f"LISTEN_PID={shown(listen_pid)} is not our pid {pid}: the sockets are not ours"
        )
    count = decimal(listen_fds)
    if count is None:
        raise ConfigurationError(
            f"LISTEN_FDS={shown(listen_fds)} is not a number: expected a count of sockets"
        )
    if count == 0:
        raise ConfigurationError("no systemd sockets received (LISTEN_FDS=0)")

    names = fd_names.split(":") if fd_names else []
    if names and len(names) != count:
        raise ConfigurationError(
            f"LISTEN_FDNAMES={shown(fd_names or '')} names {len(names)} sockets but LISTEN_FDS={count}"
        )
    if not names:
        return [_adopt(SD_LISTEN_FDS_START + index, UNNAMED, False) for index in range(count)]
    return [_adopt(SD_LISTEN_FDS_START + index, name, bool(name)) for index, name in enumerate(names)]
