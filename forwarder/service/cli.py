"""Command line of `systemd-transparent-udp-forwarderd`: parse, check everything at start-up, hand over to
the engine. Every failure becomes a one-line error and a sysexits(3) code (see the README's table).
"""

import errno
import logging
import os
import resource
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from forwarder.core.addresses import is_loop
from forwarder.core.destination import DestinationSpec, check_destination, parse_destination, parse_listen
from forwarder.core.machine import ForwardingMachine
from forwarder.core.ranges import PortMap
from forwarder.core.settings import Settings
from forwarder.errors import (
    ConfigurationError,
    ForwarderError,
    MissingPermissionError,
    OperatingSystemError,
    UsageError,
    shown,
)
from forwarder.io import capabilities
from forwarder.io.batch import BATCH
from forwarder.io.engine import Engine
from forwarder.io.listeners import ListeningSocket, Route, address_text, backends_of
from forwarder.io.range_replies import PortReplies
from forwarder.io.rawsend import RawSend, open_raw_socket
from forwarder.io.sockets import (
    CAPABILITY_HINT,
    BroadcastAddresses,
    LocalAddresses,
    bind_listener,
    check_transparent_capability,
    is_wildcard,
    listener_families,
    set_receive_buffer,
    source_toward,
)
from forwarder.service import logs, ranges
from forwarder.service.activation import listen_sockets
from forwarder.service.mapping import assign, check_form
from forwarder.service.metrics import MetricsFile, listen_label
from forwarder.service.notify import Notifier, watchdog_interval
from forwarder.service.options import PROG, build_parser, settings_from
from forwarder.service.reply_tproxy import check_reply_tproxy, open_tproxy_reply_socket, warn_of_mark_routing
from forwarder.service.resolution import lookup, pick
from forwarder.service.routecheck import reply_route_warning

# File descriptors kept free for everything but per-flow sockets (listeners, notify, one-shot sends, ...).
FD_RESERVE = 64

log = logging.getLogger("forwarder")


def open_listeners(listen: Sequence[str], specs: Sequence[DestinationSpec]) -> list[ListeningSocket]:
    """The sockets to forward from: bound here for --listen, else inherited by socket activation."""
    if not listen:
        return listen_sockets(os.environ)
    if "LISTEN_FDS" in os.environ:
        raise ConfigurationError(
            "sockets were passed by socket activation (LISTEN_FDS) and --listen was given: expected one or "
            "the other"
        )
    if any(spec.fd_name is not None for spec in specs):
        raise UsageError("NAME=DEST needs named sockets from socket activation: with --listen give DEST...")
    addresses = [parse_listen(text) for text in listen]
    return [bind_listener(host, port, text) for (host, port), text in zip(addresses, listen, strict=True)]


def build_routes(
    listeners: Sequence[ListeningSocket],
    specs: Sequence[DestinationSpec],
    settings: Settings | None = None,
    is_broadcast: Callable[[str], bool] | None = None,
) -> list[Route]:
    """Pair each listening socket with its destination, resolve it, and check the socket can serve it.

    A host name resolves to the listening socket's family when it has an address of it, or to
    --prefer-family when the socket's clients can be of that family too (a dual-stack socket). In relay
    mode a wildcard listener reads each datagram's local address (the reply's source).
    """
    settings = Settings() if settings is None else settings
    prefer_family = settings.family
    is_broadcast = BroadcastAddresses() if is_broadcast is None else is_broadcast
    routes = []
    for listener, spec in zip(listeners, assign([item.name for item in listeners], specs), strict=True):
        families = listener_families(listener)
        found = lookup(spec, listener.port)
        preferred = prefer_family if prefer_family in families else listener.family
        destination = pick(found, preferred)
        check_destination(spec, destination, is_broadcast)
        if destination.family not in families:
            where = f"{listener.label!r}" + (
                f" bound to {address_text(listener.sock)}" if listener.named else ""
            )
            raise ConfigurationError(
                f"destination {shown(spec.text)} ({destination}) is {destination.family.name} but socket "
                f"{where} only has "
                f"{' and '.join(sorted(family.name for family in families))} clients: "
                "expected a destination of a family its clients can be presented in"
            )
        if prefer_family is None and len(found) > 1 and len(families) > 1:
            # Neither family serves both kinds of client: say which ones are dropped and how to choose.
            other = next(item for family, item in found.items() if family != destination.family)
            log.warning(
                "destination %r has IPv4 and IPv6 addresses and socket %r has clients of both families: "
                "using %s, so clients of the other family are dropped (family-mismatch) instead of going to "
                "%s; choose with --prefer-family ipv4|ipv6 or write an address",
                spec.text,
                listener.label,
                destination,
                other,
            )
        if spec.ports is not None:  # a TPROXY range: the original destination tells the address asked
            ports = PortMap.of(listener.label, spec.ports, destination, spec.backend_ports, spec.port)
            routes.append(Route(listener, ports.backend, ports=ports))
            continue
        routes.append(
            Route(listener, destination, pktinfo=settings.needs_pktinfo(is_wildcard(listener.sock)))
        )
    return routes


def refuse_loops(routes: Sequence[Route]) -> None:
    """Refuse a destination that is one of our own listening addresses: datagrams would circle forever."""
    is_local = LocalAddresses()
    for route in routes:
        for other in routes:
            bound = other.listener.sock.getsockname()
            listener = (str(bound[0]), int(bound[1]))
            target = route.destination.sockaddr
            if route.ports is not None and listener[1] in route.ports.backend_ports:
                target = (target[0], listener[1])  # the range's backend port that meets this listener
            if is_loop(target, listener, listener_families(other.listener), is_local):
                raise ConfigurationError(
                    f"destination {str(route.destination)!r} of socket {route.listener.label!r} is our own "
                    f"listening socket {other.listener.label!r}: expected a backend, not a loop"
                )


def warn_of_relay_routing(settings: Settings, routes: Sequence[Route]) -> None:
    """Relay mode's start-up check of the host's routing: the mark routing of --reply-tproxy, or else the
    route of each backend's replies to the flow sockets."""
    if settings.reply_tproxy is not None:
        warn_of_mark_routing(routes, settings.reply_tproxy)
    elif settings.relays:
        warn_of_reply_routes(routes)


def warn_of_reply_routes(routes: Sequence[Route]) -> None:
    """Relay mode: log a warning for each destination whose replies the kernel would not deliver here."""
    is_local = LocalAddresses()
    for destination in dict.fromkeys(route.destination for route in routes):
        try:
            warning = reply_route_warning(destination, is_local)
        except OSError as error:
            warning = f"--reply relay: cannot check the route of replies from {destination}: {error}"
        if warning is not None:
            log.warning("%s", warning)


def fit_max_flows(wanted: int, listeners: int) -> int:
    """Raise RLIMIT_NOFILE toward what `wanted` flows need (up to the hard limit); lower `wanted` to fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + listeners + FD_RESERVE
    if soft != resource.RLIM_INFINITY and needed > soft:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    fitting = max(1, soft - listeners - FD_RESERVE)
    if fitting < wanted:
        log.warning("--max-flows %d lowered to %d to fit RLIMIT_NOFILE %d", wanted, fitting, soft)
        return fitting
    return wanted


def open_send_path(settings: Settings, families: set[socket.AddressFamily]) -> RawSend | None:
    """The raw send path's sockets, one per family (None: per-client sockets, as asked). Without
    CAP_NET_RAW it falls back to per-client sockets, saying why, where CAP_NET_ADMIN allows them; with
    neither it fails (77) naming the capability."""
    if settings.raw_path:
        sockets = []
        try:
            for family in sorted(families):
                sockets.append(open_raw_socket(family))
        except PermissionError as error:
            for sock in sockets:
                sock.close()
            try:
                check_transparent_capability(families)
            except MissingPermissionError:
                raise MissingPermissionError(
                    "cannot open a raw socket (CAP_NET_RAW) nor set IP_TRANSPARENT for per-client sockets "
                    f"(CAP_NET_RAW or CAP_NET_ADMIN): {CAPABILITY_HINT}"
                ) from None
            if settings.reply_tproxy is not None:
                raise MissingPermissionError(
                    f"--reply-tproxy needs the raw send path, and its raw socket cannot be opened "
                    f"({error.strerror}: CAP_NET_RAW is missing): grant AmbientCapabilities=CAP_NET_RAW"
                ) from None
            log.warning(
                "--send-path raw: cannot open a raw socket (%s: CAP_NET_RAW is missing); sending from one "
                "transparent socket per client instead (CAP_NET_ADMIN)",
                error.strerror,
            )
            return None
        if settings.replies_on_flow_sockets:  # flow sockets, bound to the client's address, get replies
            check_transparent_capability(families)
        return RawSend(sockets, BATCH, checksum=settings.checksum)
    check_transparent_capability(families)
    return None


def drop_capabilities() -> None:
    """Give up every capability once the sockets exist, so that a flaw in the loop finds none to abuse.
    A refusal (a seccomp filter denying capset) is a warning: forwarding works the same with them."""
    try:
        dropped = capabilities.drop_all()
    except OSError as error:
        log.warning("could not drop the capabilities no longer needed (%s): forwarding with them", error)
        return
    if dropped:
        log.debug(
            "dropped every capability (%s): nothing after start-up needs one",
            " ".join(capabilities.names(dropped)),
        )


def metrics_file(path: Path | None, listeners: Sequence[ListeningSocket]) -> MetricsFile | None:
    """The metrics file, once its temporary file could be written next to it (else the error: 64 for a
    name too long, 71 for any other failure such as a missing or read-only directory)."""
    if path is None:
        return None
    metrics = MetricsFile(path, {"listen": listen_label([listener.sock for listener in listeners])})
    try:
        metrics.check()
    except OSError as error:
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        message = (
            f"--metrics-file {str(path)!r}: cannot write its temporary file {metrics.temporary.name!r}: "
            f"{error.strerror or error} ({name})"
        )
        if error.errno == errno.ENAMETOOLONG:
            raise UsageError(f"{message}: expected a shorter file name") from None
        raise OperatingSystemError(f"{message}: expected a writable directory") from None
    return metrics


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, set up and forward until stopped; raises ForwarderError on bad input."""
    args = build_parser().parse_args(argv)
    if args.gso and args.send_path == "raw":
        raise UsageError(
            "--gso with --send-path raw: UDP GSO sends from a flow's own socket; expected --send-path "
            "sockets or no --send-path"
        )
    if args.send_proxy_protocol and args.reply == "direct":
        raise UsageError(
            "--reply direct with --send-proxy-protocol: the backend answers this host's address, so "
            "replies can only be relayed; expected --reply relay or no --reply"
        )
    check_reply_tproxy(args)
    settings = settings_from(args)
    logs.configure(args.log_level)
    specs = [parse_destination(text) for text in args.destinations]
    check_form(specs)
    ranges.refuse_unserved(specs, settings)
    listeners = open_listeners(args.listen, specs)
    notifier = Notifier()
    raw: RawSend | None = None
    reply_socket: socket.socket | None = None
    port_replies: PortReplies | None = None
    try:
        metrics = metrics_file(args.metrics_file, listeners)
        routes = build_routes(listeners, specs, settings)
        refuse_loops(routes)
        # With --send-proxy-protocol nothing binds a client's address (no capability needed) and replies
        # come back to this host's own address (no relay routing to check).
        families = {route.destination.family for route in routes}
        reply_socket = open_tproxy_reply_socket(settings, routes)
        if settings.binds_client:
            raw = open_send_path(settings, families)
            warn_of_relay_routing(settings, routes)
        ranges.make_transparent(routes)
        ranges.warn_of_mark_routing(routes)
        port_replies = ranges.open_port_replies(routes, settings)
        if settings.receive_buffer is not None:
            for listener in listeners:
                set_receive_buffer(listener.sock, settings.receive_buffer)
        # On the raw path in direct mode or with --reply-tproxy a flow holds no socket: no descriptor to fit.
        if raw is None or settings.replies_on_flow_sockets:
            settings = replace(settings, max_flows=fit_max_flows(settings.max_flows, len(listeners)))
        machine = ForwardingMachine(
            settings,
            is_local=LocalAddresses(),
            is_broadcast=BroadcastAddresses(),
            source_toward=source_toward,
            backends=backends_of(routes),
        )
        engine = Engine(
            routes,
            notifier,
            machine,
            watchdog_interval=watchdog_interval(os.environ),
            metrics=metrics,
            raw=raw,
            reply_socket=reply_socket,
            port_replies=port_replies,
        )
        if not engine.needs_capability:
            drop_capabilities()
        engine.run()
    finally:
        notifier.close()
        if raw is not None:
            raw.close()
        if reply_socket is not None:
            reply_socket.close()
        if port_replies is not None:
            port_replies.close()
        for listener in listeners:
            listener.sock.close()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run, mapping errors to a one-line message and their exit code."""
    try:
        return run(argv)
    except ForwarderError as error:
        return _fail(error)
    except OSError as error:  # a system call at set-up that has no more specific message
        return _fail(OperatingSystemError(f"set-up failed: {error.strerror or error} (errno {error.errno})"))


def _fail(error: ForwarderError) -> int:
    prefix = "<3>" if logs.stderr_is_journal() else ""
    print(f"{prefix}{PROG}: {error}", file=sys.stderr)
    return error.exit_code
