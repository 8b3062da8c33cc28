"""Command line of `systemd-transparent-udp-forwarderd`: parse, check, hand over to the engine.

Every failure becomes a one-line error and a sysexits(3) code (see the README's exit-code table).
"""

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from typing import NoReturn

from forwarder import __version__, logs
from forwarder.activation import ListeningSocket, listen_sockets
from forwarder.destination import parse_destination, resolve
from forwarder.engine import Engine, Route, set_transparent
from forwarder.errors import ForwarderError, MissingPermissionError, UsageError
from forwarder.notify import Notifier

PROG = "systemd-transparent-udp-forwarderd"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Forward UDP datagrams from socket-activated sockets to backends, keeping the client's "
        "address and port as the source (IP_TRANSPARENT). Destination i serves inherited socket i.",
    )
    parser.add_argument(
        "destinations",
        nargs="+",
        metavar="DEST",
        help="host, host:port, [v6addr], [v6addr]:port or NAME=DEST",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--stats-interval", type=float, default=10.0, metavar="SECONDS", help="STATUS= period (default 10)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default info"
    )
    return parser


def check_transparent_capability(family: socket.AddressFamily) -> None:
    """Fail early, with the fix, if IP_TRANSPARENT cannot be set (CAP_NET_ADMIN missing)."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            set_transparent(probe)
        except PermissionError:
            raise MissingPermissionError(
                "cannot set IP_TRANSPARENT: CAP_NET_ADMIN is missing; grant it with "
                "AmbientCapabilities=CAP_NET_ADMIN in the service unit (or run as root)"
            ) from None


def build_routes(listeners: Sequence[ListeningSocket], destinations: Sequence[str]) -> list[Route]:
    """Pair each listening socket with its destination (by position) and resolve it."""
    if len(listeners) != len(destinations):
        raise UsageError(
            f"received {len(listeners)} sockets but {len(destinations)} destinations were given: "
            "expected one destination per socket"
        )
    routes = []
    for listener, text in zip(listeners, destinations, strict=True):
        spec = parse_destination(text)
        routes.append(Route(listener, resolve(spec, listener.family, listener.port)))
    return routes


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, set up and forward until stopped; raises ForwarderError on bad input."""
    args = build_parser().parse_args(argv)
    log = logs.configure(args.log_level)
    if args.stats_interval <= 0:
        raise UsageError(f"--stats-interval {args.stats_interval!r} must be a positive number of seconds")
    listeners = listen_sockets(os.environ)
    routes = build_routes(listeners, args.destinations)
    for family in {route.destination.family for route in routes}:
        check_transparent_capability(family)
    notifier = Notifier()
    try:
        Engine(routes, notifier, args.stats_interval).run()
    finally:
        notifier.close()
        for listener in listeners:
            listener.sock.close()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run, mapping errors to a one-line message and their exit code."""
    try:
        return run(argv)
    except ForwarderError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return error.exit_code
