"""Relay mode's one tproxy reply socket at start-up (--reply-tproxy): the option combinations it refuses,
opening the socket while the capability is there, and the check of the host's routing: the mark routing
(one warning line per family naming what to add) or, for a backend on this host, the loopback rule that
brings its replies back in through lo, where the tproxy rule can take them.
"""

import argparse
import errno
import logging
import socket
from collections.abc import Callable, Sequence

from forwarder.core.destination import Destination
from forwarder.core.settings import Settings
from forwarder.errors import UsageError
from forwarder.io.listeners import Route
from forwarder.io.reply_socket import open_reply_socket
from forwarder.io.sockets import LocalAddresses
from forwarder.service.routecheck import (
    NETLINK_ROUTE,
    RTN_NAMES,
    SAMPLE_CLIENT_PORT,
    TABLE,
    ask,
    mark_routing_warning,
    route_query,
    sample_client,
)

log = logging.getLogger("forwarder")


def check_reply_tproxy(args: argparse.Namespace) -> None:
    """--reply-tproxy replaces the flow sockets of relay mode on the raw send path: a usage error (64)
    with anything else, naming why."""
    if args.reply_tproxy is None:
        return
    if args.send_proxy_protocol:
        raise UsageError(
            "--reply-tproxy with --send-proxy-protocol: the backend answers this host's own address, on "
            "each flow's socket, so there is nothing to steer; expected one or the other"
        )
    if args.reply != "relay":
        raise UsageError(
            f"--reply-tproxy {args.reply_tproxy} without --reply relay: it steers the replies the forwarder "
            "relays, and in direct mode the backend answers the clients itself; expected --reply relay"
        )
    if args.gso or args.send_path == "sockets":
        option = "--gso" if args.gso else "--send-path sockets"
        raise UsageError(
            f"--reply-tproxy with {option}: it replaces the per-client sockets of relay mode, and {option} "
            "keeps one per client to send from; expected the raw send path (no --send-path, or raw)"
        )


def local_backend_routing_text(destination: Destination) -> str:
    """The `ip` commands that send the replies of `destination`, a backend on this host, back in through
    `lo`, where the README's nft rule on `iifname "lo"` steers them (the README's recipe)."""
    six = destination.family == socket.AF_INET6
    ip = "ip -6" if six else "ip"
    selector = f"from {destination.address} iif lo ipproto udp sport {destination.port}"
    rule = f"{ip} rule add {selector} lookup {TABLE}"
    return f"`{rule}` and `{ip} route add local {'::/0' if six else '0.0.0.0/0'} dev lo table {TABLE}`"


def local_backend_warning(destination: Destination, is_local: Callable[[str], bool]) -> str | None:
    """A one-line warning when the kernel would not route the replies of `destination`, a backend on this
    host, back in through `lo`, naming the rule and route to add; None when it would. Only through `lo` do
    they reach prerouting, where tproxy works: the host's own output never passes it otherwise, and one
    from 127.0.0.1 or ::1 toward a client is refused (IPv4) or dropped (IPv6) on its way out. The kernel
    answers the route of such a reply as the backend's own output (RTM_GETROUTE, unprivileged)."""
    family = destination.family
    client = sample_client(family, is_local)
    ports = (destination.port, SAMPLE_CLIENT_PORT)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.settimeout(2)
        reply = ask(sock, route_query(family, client, source=destination.address, ports=ports))
    if reply.local:
        return None
    if reply.error:
        fate = f"refuses them ({errno.errorcode.get(reply.error, reply.error)})"
    else:
        fate = f"routes them as {RTN_NAMES.get(reply.type, str(reply.type))}"
        if reply.oif:
            fate += f" via {_interface(reply.oif)}"
    return (
        f"replies from {destination}, a backend on this host, would not come back in through lo, where the "
        f"tproxy rule takes them: the kernel {fate} (asked for a reply to {client} port "
        f"{SAMPLE_CLIENT_PORT}); add {local_backend_routing_text(destination)}"
    )


def _interface(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"interface {index}"


def warn_of_mark_routing(routes: Sequence[Route], port: int) -> None:
    """--reply-tproxy: log one warning per backend family whose steered replies no fwmark rule would
    deliver here, naming the rule and route to add (the nft tproxy rule itself is not visible without
    CAP_NET_ADMIN). A backend on this host needs no mark (its replies come back in through lo already
    routed locally) but the loopback rule that sends them there: one warning per such backend without it."""
    is_local = LocalAddresses()
    destinations = list(dict.fromkeys(route.destination for route in routes))
    local = [destination for destination in destinations if is_local(destination.address)]
    for family in sorted({destination.family for destination in destinations if destination not in local}):
        try:
            warning = mark_routing_warning(family)
        except OSError as error:
            warning = f"tproxy: cannot check the mark routing: {error}"
        if warning is not None:
            log.warning("--reply-tproxy %d: %s", port, warning.removeprefix("tproxy: "))
    for destination in local:
        try:
            warning = local_backend_warning(destination, is_local)
        except OSError as error:
            warning = f"cannot check the route of replies from {destination}: {error}"
        if warning is not None:
            log.warning("--reply-tproxy %d: %s", port, warning)


def open_tproxy_reply_socket(settings: Settings, routes: Sequence[Route]) -> socket.socket | None:
    """--reply-tproxy: the one reply socket, opened at start-up while the capability is there (nothing
    later needs it); None without the option."""
    if settings.reply_tproxy is None:
        return None
    return open_reply_socket({route.destination.family for route in routes}, settings.reply_tproxy)
