"""Start-up of the port range listeners (TPROXY, `FIRST-LAST@HOST...`): each must be transparent to receive
the datagrams an nftables `tproxy` rule steers to it; the host must route the marked datagrams locally (one
warning line naming what is missing; the nft rule itself needs CAP_NET_ADMIN to read: netlab doctor checks
it); in relay mode the replies leave from the port asked, through raw sockets opened here.
"""

import logging
import socket
from collections.abc import Callable, Sequence

from forwarder.core.destination import DestinationSpec
from forwarder.core.settings import Settings
from forwarder.errors import MissingPermissionError, UsageError, shown
from forwarder.io.linux import IP_TRANSPARENT, IPV6_TRANSPARENT
from forwarder.io.listeners import Route
from forwarder.io.range_replies import PortReplies, open_reply_socket
from forwarder.io.sockets import is_wildcard, probe_local, set_transparent
from forwarder.service.routecheck import mark_routing_warning

log = logging.getLogger("forwarder")


def refuse_unserved(specs: Sequence[DestinationSpec], settings: Settings) -> None:
    """A port range with --send-proxy-protocol is a usage error: its replies must leave from the port
    asked, which takes a raw socket (CAP_NET_RAW), and that mode promises to run without a capability."""
    ranged = next((spec for spec in specs if spec.ports is not None), None)
    if ranged is not None and settings.send_proxy_protocol:
        raise UsageError(
            f"port range destination {shown(ranged.text)} with --send-proxy-protocol: a range's replies "
            "leave from the port asked through a raw socket (CAP_NET_RAW), which that mode never holds; "
            "expected a range without --send-proxy-protocol"
        )


def is_transparent(sock: socket.socket) -> bool:
    """Whether `sock` has IP_TRANSPARENT (IPV6_TRANSPARENT on an IPv6 socket: the same flag)."""
    if sock.family == socket.AF_INET6:
        return bool(sock.getsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT))
    return bool(sock.getsockopt(socket.IPPROTO_IP, IP_TRANSPARENT))


def make_transparent(routes: Sequence[Route]) -> None:
    """Give every range listener IP_TRANSPARENT (a tproxy rule delivers only to a transparent socket): the
    .socket unit's Transparent=true did, `--listen` sockets get it here (CAP_NET_RAW or CAP_NET_ADMIN;
    without them 77, naming both fixes)."""
    for route in routes:
        if route.ports is None or is_transparent(route.listener.sock):
            continue
        try:
            set_transparent(route.listener.sock)
        except PermissionError:
            raise MissingPermissionError(
                f"socket {route.listener.label!r} serves the port range {route.ports.ports} but has no "
                "IP_TRANSPARENT, which a tproxy rule needs, and it cannot be set (CAP_NET_RAW or "
                "CAP_NET_ADMIN): expected Transparent=true in its .socket unit, or the capability"
            ) from None


def warn_of_mark_routing(
    routes: Sequence[Route],
    check: Callable[[int], str | None] = mark_routing_warning,
    is_local: Callable[[str], bool] = probe_local,
) -> list[str]:
    """Say, once per family of range listeners, when the host would not deliver marked datagrams locally
    (no `ip rule fwmark` to a table with a `local` route); the lines logged are returned. The routing is
    needed only where the tproxy rule steers addresses that are not this host's own (a service address):
    a listener bound to such an address gets a warning; a wildcard listener, whose rule may steer only the
    host's own addresses (delivered locally anyway), an informational line; one bound to a local address,
    nothing."""
    severity: dict[int, int] = {}
    for route in routes:
        if route.ports is None:
            continue
        sock = route.listener.sock
        address = str(sock.getsockname()[0]).partition("%")[0]
        if is_wildcard(sock):
            level = logging.INFO
        elif is_local(address):
            continue
        else:
            level = logging.WARNING
        severity[sock.family] = max(severity.get(sock.family, 0), level)
    lines = []
    for family, level in sorted(severity.items()):
        try:
            line = check(family)
        except OSError as error:
            name = socket.AddressFamily(family).name
            line = f"port ranges: cannot check the routing of marked {name} datagrams: {error}"
        if line is None:
            continue
        if level == logging.INFO:
            line += " (needed only if the tproxy rule steers addresses that are not this host's own)"
        log.log(level, "%s", line)
        lines.append(line)
    return lines


def open_port_replies(routes: Sequence[Route], settings: Settings) -> PortReplies | None:
    """Relay mode with port ranges: the raw sockets their replies leave from (one per family of range
    clients), or None when no range relays. Without CAP_NET_RAW: 77."""
    families = sorted({route.destination.family for route in routes if route.ports is not None})
    if not families or not settings.relays:
        return None
    sockets: list[socket.socket] = []
    try:
        for family in families:
            sockets.append(open_reply_socket(family))
    except PermissionError:
        for sock in sockets:
            sock.close()
        raise MissingPermissionError(
            "--reply relay on a port range sends each reply from the port its client asked through a raw "
            "socket, which needs CAP_NET_RAW: grant AmbientCapabilities=CAP_NET_RAW (or run as root)"
        ) from None
    return PortReplies(sockets, checksum=settings.checksum)
