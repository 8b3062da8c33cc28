"""Command line of `systemd-transparent-udp-forwarderd`: parse, check everything at start-up, hand over to
the engine. Every failure becomes a one-line error and a sysexits(3) code (see the README's table).
"""

import argparse
import errno
import ipaddress
import logging
import math
import os
import resource
import socket
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from forwarder import __version__, capabilities, logs
from forwarder.activation import ListeningSocket, address_text, listen_sockets
from forwarder.batch import BATCH
from forwarder.core import is_loop
from forwarder.destination import (
    DestinationSpec,
    check_destination,
    lookup,
    parse_destination,
    parse_listen,
    pick,
)
from forwarder.engine import Engine, Route
from forwarder.errors import (
    ConfigurationError,
    ForwarderError,
    MissingPermissionError,
    OperatingSystemError,
    UsageError,
    shown,
)
from forwarder.machine import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS, ForwardingMachine
from forwarder.mapping import assign, check_form
from forwarder.metrics import MetricsFile, listen_label
from forwarder.notify import Notifier, watchdog_interval
from forwarder.proxy_protocol import Network, TrustedSources, plain_network
from forwarder.rawsend import RawSend, open_raw_socket
from forwarder.routecheck import reply_route_warning
from forwarder.sockets import (
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

PROG = "systemd-transparent-udp-forwarderd"
# File descriptors kept free for everything but per-flow sockets (listeners, notify, one-shot sends, ...).
FD_RESERVE = 64
# The shortest --stats-interval and --flow-idle-timeout: more than 20 reports or sweeps a second is noise.
MIN_INTERVAL = 0.05
MAX_BUFFER = 2**31 - 1  # SO_RCVBUF(FORCE) takes a C int
FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}  # --prefer-family

log = logging.getLogger("forwarder")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def _number(kind: type[int] | type[float], text: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number") from None


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        value = _number(kind, text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{shown(text)} must be greater than 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _seconds(text: str) -> float:
    """An interval: finite (inf would overflow the selector's timeout) and at least MIN_INTERVAL (1e-300
    made the loop send STATUS= as fast as it could)."""
    value = float(_number(float, text))
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a finite number of seconds")
    if not value >= MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"{shown(text)} must be at least {MIN_INTERVAL:g} seconds")
    return value


def _buffer_size(text: str) -> int:
    """A socket buffer size: the kernel takes a C int (setsockopt raised OverflowError beyond it)."""
    value = int(_number(int, text))
    if not 1 <= value <= MAX_BUFFER:
        raise argparse.ArgumentTypeError(f"{shown(text)} is out of range: expected 1 to {MAX_BUFFER} bytes")
    return value


def _metrics_path(text: str) -> Path:
    """A file to write: the metrics are written to a temporary file next to it and renamed over it, which
    needs a file name ('' and '/' have none), cannot replace a directory, and must not replace a FIFO, a
    device or a socket (as root, /dev/null would become a regular file)."""
    path = Path(text)
    if not text:
        raise argparse.ArgumentTypeError("'' is empty: expected the path of a file such as forwarder.prom")
    if not path.name or text.endswith("/") or path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a directory: expected the path of a file in it, such as "
            f"{str(path / 'forwarder.prom')!r}"
        )
    try:
        mode = path.stat().st_mode
    except OSError:  # nothing there yet (or not reachable: the start-up write check says why)
        return path
    if not stat.S_ISREG(mode):
        raise argparse.ArgumentTypeError(
            f"{text!r} exists and is not a regular file ({_file_kind(mode)}): expected a regular file "
            "or a new name, which is replaced at every interval"
        )
    return path


def _file_kind(mode: int) -> str:
    """'a FIFO', 'a character device', ... for an error message."""
    kinds = [
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


def _network(text: str) -> Network:
    """A network whose senders' PROXY headers are believed: ADDRESS/PREFIX without host bits, or one
    address. Host bits are refused, not masked: a trust list must say exactly whom it trusts. A v4-mapped
    network (::ffff:198.51.100.20/128) means its IPv4 network: a dual-stack listener's IPv4 senders are
    compared as IPv4."""
    try:
        return plain_network(ipaddress.ip_network(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not a network ({error}): expected a CIDR such as 192.0.2.0/24 or "
            "2001:db8::/64, or one address"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Forward UDP datagrams from socket-activated (or --listen) sockets to backends, keeping "
        "the client's address and port as the source (a raw socket with IP_TRANSPARENT: needs CAP_NET_RAW; "
        "or one transparent socket per client: CAP_NET_RAW or CAP_NET_ADMIN). Every capability is dropped "
        "once the sockets exist where nothing later needs one.",
        epilog="DEST is host, host:port, [v6addr], [v6addr]:port or a bare IPv6 literal; without a port the "
        "listening socket's port is used. Destination i serves socket i (LISTEN_FDS order, or --listen "
        "order); or write every one as NAME=DEST to map by FileDescriptorName= in any order (the two forms "
        "do not mix). Exit codes: 64 usage, 68 unknown host, 71 OS error, 77 a capability missing "
        "(named), 78 configuration.",
    )
    parser.add_argument("destinations", nargs="+", metavar="DEST", help="where datagrams of a socket go")
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="bind this UDP socket instead of using socket activation; repeatable; [::]:PORT is dual-stack",
    )
    parser.add_argument(
        "--prefer-family",
        choices=sorted(FAMILIES),
        help="for a host name with IPv4 and IPv6 addresses on a socket with clients of both families "
        "(dual-stack [::]): the family to send to (its clients are forwarded, the other family's dropped); "
        "default: the socket's own family, with a warning",
    )
    parser.add_argument(
        "--stats-interval",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help=f"period of the STATUS= report (default 10, at least {MIN_INTERVAL:g})",
    )
    parser.add_argument(
        "--max-flows",
        type=_positive(int),
        default=DEFAULT_MAX_FLOWS,
        metavar="N",
        help=f"flows kept at most, evicted by second chance, ~LRU (default {DEFAULT_MAX_FLOWS}); where each "
        "holds a socket (--send-path sockets, relay mode) lowered to fit RLIMIT_NOFILE",
    )
    parser.add_argument(
        "--flow-idle-timeout",
        type=_seconds,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"forget a flow (close its socket, if it has one) after this long without datagrams (default "
        f"{DEFAULT_IDLE_TIMEOUT:g}, "
        f"at least {MIN_INTERVAL:g})",
    )
    parser.add_argument(
        "--receive",
        choices=["batch", "single"],
        default="batch",
        help="batch: up to 64 datagrams per recvmmsg call (default; falls back to single where libc lacks "
        "recvmmsg); single: one recvmsg per datagram",
    )
    parser.add_argument(
        "--proxy-protocol-from",
        type=_network,
        action="append",
        default=[],
        metavar="CIDR",
        help="datagrams from these senders (load balancers) must start with a PROXY protocol v2 header: "
        "it is removed and the client it names is presented to the backend (LOCAL: the sender itself); "
        "a datagram without a valid one is dropped and counted by reason. Others are forwarded as they "
        "are: their headers are payload, never believed. A v4-mapped network means its IPv4 one. "
        "Repeatable",
    )
    parser.add_argument(
        "--reply",
        choices=["direct", "relay"],
        help="direct: the backend's replies go straight to the clients (the host rewrites their source; "
        "default); relay: the host routes them to the forwarder, which sends each from the address the "
        "client sent to (see the README's routing recipe); --send-proxy-protocol implies relay",
    )
    parser.add_argument(
        "--send-proxy-protocol",
        action="store_true",
        help="send from this host's own address (no IP_TRANSPARENT, no capability), each datagram after "
        "a PROXY protocol v2 header naming the client and the address it sent to (with "
        "--proxy-protocol-from: the destination the received header named); the backend's replies are "
        "relayed to the client from the listening socket",
    )
    parser.add_argument(
        "--receive-buffer",
        type=_buffer_size,
        metavar="BYTES",
        help="set SO_RCVBUF of the listening sockets (SO_RCVBUFFORCE when allowed); default: keep what "
        "systemd set (ReceiveBuffer=)",
    )
    parser.add_argument(
        "--gso",
        action="store_true",
        help="with --receive batch: send each run of equal-size datagrams of one flow as one UDP GSO "
        "send (UDP_SEGMENT; about 3x less send work at one flow). This host's netfilter OUTPUT and "
        "POSTROUTING then see a run as one packet; ignored where the kernel lacks UDP_SEGMENT",
    )
    parser.add_argument(
        "--send-path",
        choices=["raw", "sockets"],
        help="raw: one raw socket per family sends every client's datagrams, a received batch in one "
        "sendmmsg, no socket per client (default; needs CAP_NET_RAW, falls back to sockets with a warning "
        "when only CAP_NET_ADMIN is there); sockets: one transparent socket per client (the default with "
        "--gso, which needs them)",
    )
    parser.add_argument(
        "--udp-checksum",
        choices=["none", "compute"],
        default="none",
        help="IPv4 on the raw send path: none (default) sends checksum 0, which UDP over IPv4 allows (RFC "
        "768) and Linux's own UDP tunnels send; compute sums every datagram in Python, which doubled the "
        "forwarder's CPU time per 1200 B datagram in netlab bench (10.4 vs 5.3 us at one flow); use it where "
        "a stateless nftables rewrite of the ports (payload statements) meets the datagrams: it turns a 0 "
        "checksum into a wrong one (conntrack NAT keeps it 0). IPv6 always gets the kernel's checksum",
    )
    parser.add_argument(
        "--metrics-file",
        type=_metrics_path,
        metavar="PATH",
        help="write the counters as Prometheus metrics to PATH (node_exporter's textfile collector) every "
        "--stats-interval and on SIGUSR1 or SIGHUP; an existing PATH must be a regular file, and its "
        "directory writable at start-up",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default info"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


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
    prefer_family: socket.AddressFamily | None = None,
    is_broadcast: Callable[[str], bool] | None = None,
    relay: bool = False,
) -> list[Route]:
    """Pair each listening socket with its destination, resolve it, and check the socket can serve it.

    A host name resolves to the listening socket's family when it has an address of it, or to
    `prefer_family` when the socket's clients can be of that family too (a dual-stack socket). In relay
    mode a wildcard listener reads each datagram's local address (the reply's source).
    """
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
        routes.append(Route(listener, destination, pktinfo=relay and is_wildcard(listener.sock)))
    return routes


def refuse_loops(routes: Sequence[Route]) -> None:
    """Refuse a destination that is one of our own listening addresses: datagrams would circle forever."""
    is_local = LocalAddresses()
    for route in routes:
        for other in routes:
            bound = other.listener.sock.getsockname()
            listener = (str(bound[0]), int(bound[1]))
            if is_loop(route.destination.sockaddr, listener, listener_families(other.listener), is_local):
                raise ConfigurationError(
                    f"destination {str(route.destination)!r} of socket {route.listener.label!r} is our own "
                    f"listening socket {other.listener.label!r}: expected a backend, not a loop"
                )


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


def open_send_path(
    send_path: str, families: set[socket.AddressFamily], *, relay: bool, checksum: bool
) -> RawSend | None:
    """The raw send path's sockets, one per family (None: per-client sockets). Without CAP_NET_RAW it
    falls back to per-client sockets, saying why, where CAP_NET_ADMIN allows them; with neither it fails
    (77) naming the capability."""
    if send_path == "raw":
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
            log.warning(
                "--send-path raw: cannot open a raw socket (%s: CAP_NET_RAW is missing); sending from one "
                "transparent socket per client instead (CAP_NET_ADMIN)",
                error.strerror,
            )
            return None
        if relay:  # relay mode's flow sockets, bound to the client's address, receive the replies
            check_transparent_capability(families)
        return RawSend(sockets, BATCH, checksum=checksum)
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
    logs.configure(args.log_level)
    specs = [parse_destination(text) for text in args.destinations]
    check_form(specs)
    listeners = open_listeners(args.listen, specs)
    notifier = Notifier()
    raw: RawSend | None = None
    try:
        metrics = metrics_file(args.metrics_file, listeners)
        send_header = args.send_proxy_protocol
        relay = args.reply == "relay" or send_header
        routes = build_routes(listeners, specs, FAMILIES.get(args.prefer_family), relay=relay)
        refuse_loops(routes)
        # With --send-proxy-protocol nothing binds a client's address (no capability needed) and replies
        # come back to this host's own address (no relay routing to check).
        if not send_header:
            raw = open_send_path(
                args.send_path or ("sockets" if args.gso else "raw"),
                {route.destination.family for route in routes},
                relay=relay,
                checksum=args.udp_checksum == "compute",
            )
            if relay:
                warn_of_reply_routes(routes)
        if args.receive_buffer is not None:
            for listener in listeners:
                set_receive_buffer(listener.sock, args.receive_buffer)
        # On the raw path in direct mode a flow holds no socket: no file descriptor to fit.
        socketless = raw is not None and not relay
        machine = ForwardingMachine(
            args.max_flows if socketless else fit_max_flows(args.max_flows, len(listeners)),
            args.flow_idle_timeout,
            LocalAddresses(),
            BroadcastAddresses(),
            trusted=TrustedSources(args.proxy_protocol_from) if args.proxy_protocol_from else None,
            relay=relay,
            send_header=send_header,
            source_toward=source_toward,
            backends=[route.destination.sockaddr for route in routes],
        )
        engine = Engine(
            routes,
            notifier,
            machine,
            receive_strategy=args.receive,
            gso=args.gso,
            stats_interval=args.stats_interval,
            watchdog_interval=watchdog_interval(os.environ),
            metrics=metrics,
            connect_flows=relay,
            raw=raw,
        )
        if not engine.needs_capability:
            drop_capabilities()
        engine.run()
    finally:
        notifier.close()
        if raw is not None:
            raw.close()
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
