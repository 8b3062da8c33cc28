"""Relay mode's one tproxy reply socket at start-up (--reply-tproxy): the option combinations it refuses,
the backends it cannot serve (on this host: their replies never pass prerouting), opening the socket while
the capability is there, and the check of the host's mark routing (one warning line per family naming
what to add).
"""

import argparse
import logging
import socket
from collections.abc import Iterable, Sequence

from forwarder.core.settings import Settings
from forwarder.errors import ConfigurationError, UsageError
from forwarder.io.listeners import Route
from forwarder.io.reply_socket import open_reply_socket
from forwarder.io.sockets import LocalAddresses
from forwarder.service.routecheck import mark_routing_warning

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


def refuse_local_backends_for_tproxy(routes: Sequence[Route], port: int) -> None:
    """--reply-tproxy: a backend on this host answers through the host's output path, which never passes
    prerouting, where the tproxy rule steers replies: refused (78), naming the relay routing that works."""
    is_local = LocalAddresses()
    for route in routes:
        address = route.destination.address
        if is_local(address):
            raise ConfigurationError(
                f"--reply-tproxy {port}: destination {str(route.destination)!r} of socket "
                f"{route.listener.label!r} is on this host, whose replies never pass prerouting, where the "
                "tproxy rule works: expected a backend on another host or namespace, or --reply relay "
                "without --reply-tproxy (the README's rules for a backend on the host itself)"
            )


def warn_of_mark_routing(families: Iterable[socket.AddressFamily], port: int) -> None:
    """--reply-tproxy: log one warning per family whose steered replies no fwmark rule would deliver here,
    naming the rule and route to add (the nft tproxy rule itself is not visible without CAP_NET_ADMIN)."""
    for family in sorted(families):
        try:
            warning = mark_routing_warning(family)
        except OSError as error:
            warning = f"tproxy: cannot check the mark routing: {error}"
        if warning is not None:
            log.warning("--reply-tproxy %d: %s", port, warning.removeprefix("tproxy: "))


def open_tproxy_reply_socket(settings: Settings, routes: Sequence[Route]) -> socket.socket | None:
    """--reply-tproxy: the one reply socket, opened at start-up while the capability is there (nothing
    later needs it), once no backend is on this host; None without the option."""
    if settings.reply_tproxy is None:
        return None
    refuse_local_backends_for_tproxy(routes, settings.reply_tproxy)
    return open_reply_socket({route.destination.family for route in routes}, settings.reply_tproxy)
