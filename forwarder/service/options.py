"""The command line's options: the parser, and the types that check each value as it is read (a bad one is a
usage error naming it).
"""

import argparse
import ipaddress
import math
import stat
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from forwarder import __version__
from forwarder.core.flows import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_FLOWS
from forwarder.core.proxy_protocol import Network, plain_network
from forwarder.core.settings import FAMILIES, Settings
from forwarder.errors import (
    UsageError,
    shown,
)

PROG = "systemd-transparent-udp-forwarderd"


# The shortest --stats-interval and --flow-idle-timeout: more than 20 reports or sweeps a second is noise.
MIN_INTERVAL = 0.05


MAX_BUFFER = 2**31 - 1  # SO_RCVBUF(FORCE) takes a C int


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
    """An interval: finite (the selector's timeout is a number of milliseconds) and at least MIN_INTERVAL
    (a shorter one would have the loop report or sweep without pause)."""
    value = float(_number(float, text))
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a finite number of seconds")
    if not value >= MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"{shown(text)} must be at least {MIN_INTERVAL:g} seconds")
    return value


def _buffer_size(text: str) -> int:
    """A socket buffer size: the kernel takes a C int, so a larger one cannot be set."""
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


def _port(text: str) -> int:
    """A UDP port to bind: 1 to 65535 (0 would let the kernel pick one no nftables rule names)."""
    value = int(_number(int, text))
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{shown(text)} is out of range: expected a port of 1 to 65535")
    return value


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
        "do not mix). A socket an nftables tproxy rule feeds a port range serves it with "
        "FIRST-LAST@HOST (each port to the same port), FIRST-LAST@HOST:PORT (all to one port) or "
        "FIRST-LAST@HOST:BFIRST-BLAST (by offset; same length), e.g. 27000-27050@192.0.2.2; a datagram "
        "to a port outside the range is dropped (outside-range). Exit codes: 64 usage, 68 unknown host, "
        "71 OS error, 77 a capability missing (named), 78 configuration.",
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
        "holds a socket (--send-path sockets, relay mode without --reply-tproxy) lowered to fit "
        "RLIMIT_NOFILE",
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
        "--reply-tproxy",
        type=_port,
        metavar="PORT",
        help="with --reply relay on the raw send path: the host steers every reply (nftables tproxy to "
        ":PORT and a mark routed to a local table) to one transparent socket bound to PORT, which reads "
        "them in batches with their client (IP_ORIGDSTADDR): no socket per client at all, and no "
        "capability after start-up (see the README's recipe)",
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


def settings_from(args: argparse.Namespace) -> Settings:
    """The one Settings of a parsed command line (after the checks of option combinations)."""
    return Settings(
        reply=args.reply or "direct",
        send_proxy_protocol=args.send_proxy_protocol,
        send_path=args.send_path,
        udp_checksum=args.udp_checksum,
        gso=args.gso,
        receive=args.receive,
        max_flows=args.max_flows,
        flow_idle_timeout=args.flow_idle_timeout,
        stats_interval=args.stats_interval,
        proxy_protocol_from=tuple(args.proxy_protocol_from),
        prefer_family=args.prefer_family,
        receive_buffer=args.receive_buffer,
        reply_tproxy=args.reply_tproxy,
    )
