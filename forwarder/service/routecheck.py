"""Relay mode's start-up check: would a reply from the destination to a client reach this host's sockets?
The kernel answers: RTM_GETROUTE over a raw AF_NETLINK socket (standard library only) for the route of a
reply from the backend's address and port to a client-like address, as the host would route it on arrival
from the backend (or, for a backend on this host, as the backend's own output). Only a `local` answer
delivers replies to the forwarder; anything else gets a one-line warning naming the rule to add.

Building and reading the messages is pure (tested without sockets); `reply_route_warning` asks the kernel.
"""

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from forwarder.core.destination import Destination

NETLINK_ROUTE = 0
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
RTA_DST, RTA_SRC, RTA_IIF, RTA_OIF = 1, 2, 3, 4
RTA_MARK = 16
RTA_IP_PROTO, RTA_SPORT, RTA_DPORT = 27, 28, 29
RTM_GETRULE, RTM_NEWRULE = 34, 32
NLMSG_DONE = 3
NLM_F_DUMP = 0x300
FRA_FWMARK, FRA_TABLE = 10, 15
_RULE = struct.Struct("=BBBBBBBBI")  # struct fib_rule_hdr: ..., table, res1, res2, action, flags
RTN_UNICAST, RTN_LOCAL = 1, 2
RTN_NAMES = {0: "unspec", 1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable",
             8: "prohibit", 9: "throw"}  # fmt: skip
_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg
_ATTRIBUTE = struct.Struct("=HH")  # struct rtattr
TABLE = 100  # the table number the warnings suggest
SAMPLE_CLIENTS: dict[int, tuple[str, ...]] = {socket.AF_INET: ("203.0.113.1", "198.51.100.1", "192.0.2.1"),
                  socket.AF_INET6: ("2001:db8::1", "2001:db8:ffff::1")}  # fmt: skip
SAMPLE_CLIENT_PORT = 40000


@dataclass(frozen=True, slots=True)
class RouteAnswer:
    """The kernel's answer to one route query: the route's type and output interface, or an errno."""

    type: int = 0
    oif: int = 0
    error: int = 0

    @property
    def local(self) -> bool:
        return self.error == 0 and self.type == RTN_LOCAL


def _attribute(kind: int, data: bytes) -> bytes:
    length = _ATTRIBUTE.size + len(data)
    return _ATTRIBUTE.pack(length, kind) + data + bytes(-length % 4)


def route_query(  # noqa: PLR0913 - the fields of one RTM_GETROUTE query
    family: int,
    destination: str,
    *,
    source: str | None = None,
    iif: int = 0,
    ports: tuple[int, int] | None = None,
    sequence: int = 1,
    mark: int | None = None,
) -> bytes:
    """An RTM_GETROUTE request: the route to `destination` (from `source`, arriving on interface `iif`,
    for UDP from port ports[0] to ports[1] when given, of a packet carrying firewall mark `mark`), as
    policy rules see it."""
    bits = 32 if family == socket.AF_INET else 128
    body = _RTMSG.pack(family, bits, bits if source else 0, 0, 0, 0, 0, 0, 0)
    body += _attribute(RTA_DST, socket.inet_pton(family, destination))
    if source:
        body += _attribute(RTA_SRC, socket.inet_pton(family, source))
    if iif:
        body += _attribute(RTA_IIF, struct.pack("=I", iif))
    if mark is not None:
        body += _attribute(RTA_MARK, struct.pack("=I", mark))
    if ports is not None:
        body += _attribute(RTA_IP_PROTO, bytes([socket.IPPROTO_UDP]))
        body += _attribute(RTA_SPORT, struct.pack("!H", ports[0]))
        body += _attribute(RTA_DPORT, struct.pack("!H", ports[1]))
    return _HEADER.pack(_HEADER.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, sequence, 0) + body


def parse_route_answer(data: bytes) -> RouteAnswer:
    """The answer in the kernel's reply to route_query: an RTM_NEWROUTE, or an NLMSG_ERROR's errno."""
    if len(data) < _HEADER.size:
        return RouteAnswer(error=errno.EBADMSG)
    _, kind, _, _, _ = _HEADER.unpack_from(data)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", data, _HEADER.size)
        return RouteAnswer(error=-code if code else errno.EBADMSG)
    if kind != RTM_NEWROUTE or len(data) < _HEADER.size + _RTMSG.size:
        return RouteAnswer(error=errno.EBADMSG)
    route_type = _RTMSG.unpack_from(data, _HEADER.size)[7]
    oif = 0
    offset = _HEADER.size + _RTMSG.size
    while offset + _ATTRIBUTE.size <= len(data):
        length, attribute = _ATTRIBUTE.unpack_from(data, offset)
        if length < _ATTRIBUTE.size:
            break
        if attribute == RTA_OIF and length >= _ATTRIBUTE.size + 4:
            (oif,) = struct.unpack_from("=I", data, offset + _ATTRIBUTE.size)
        offset += (length + 3) & ~3
    return RouteAnswer(route_type, oif)


def ask(sock: socket.socket, request: bytes) -> RouteAnswer:
    """Send one request on a NETLINK_ROUTE socket and read its answer."""
    sock.send(request)
    return parse_route_answer(sock.recv(65536))


def relay_rule_text(destination: Destination) -> str:
    """The `ip` commands that route `destination`'s replies to this host's sockets (README's recipe)."""
    six = destination.family == socket.AF_INET6
    ip = "ip -6" if six else "ip"
    address = ipaddress.ip_address(destination.address)
    if address.is_loopback:
        rule = f"{ip} rule add from {'::1' if six else '127.0.0.0/8'} iif lo lookup {TABLE}"
    else:
        rule = f"{ip} rule add from {address} ipproto udp sport {destination.port} lookup {TABLE}"
    return f"`{rule}` and `{ip} route add local {'::/0' if six else '0.0.0.0/0'} dev lo table {TABLE}`"


def sample_client(family: int, is_local: Callable[[str], bool]) -> str:
    """A client-like address: one of the documentation addresses that is not this host's."""
    candidates = SAMPLE_CLIENTS[family]
    return next((address for address in candidates if not is_local(address)), candidates[0])


def reply_route_warning(destination: Destination, is_local: Callable[[str], bool]) -> str | None:
    """A one-line warning when the kernel would not deliver `destination`'s replies to this host's sockets,
    naming the rule to add; None when it would (or when the backend itself cannot be reached: that is the
    forwarding's error, counted per datagram)."""
    family = destination.family
    client = sample_client(family, is_local)
    ports = (destination.port, SAMPLE_CLIENT_PORT)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.settimeout(2)
        to_backend = ask(sock, route_query(family, destination.address))
        if to_backend.error:
            return None
        if to_backend.local:  # a backend on this host: its replies are its own output
            reply = ask(
                sock, route_query(family, client, source=destination.address, ports=ports, sequence=2)
            )
        else:
            reply = ask(
                sock,
                route_query(
                    family, client, source=destination.address, iif=to_backend.oif, ports=ports, sequence=2
                ),
            )
    if reply.local:
        return None
    if reply.error:
        fate = f"refuses them ({errno.errorcode.get(reply.error, reply.error)})"
    else:
        kind = RTN_NAMES.get(reply.type, str(reply.type))
        fate = f"routes them as {kind} via {_interface(reply.oif)}" if reply.oif else f"routes them as {kind}"
    asked = f"asked for a reply to {client} port {SAMPLE_CLIENT_PORT}"
    return (
        f"--reply relay: replies from {destination} to clients would not reach this host's sockets: "
        f"the kernel {fate} ({asked}); add {relay_rule_text(destination)}"
    )


def rules_dump_request(family: int, sequence: int = 1) -> bytes:
    """An RTM_GETRULE dump request: every policy rule of `family` (readable without privileges)."""
    body = _RULE.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    return _HEADER.pack(_HEADER.size + len(body), RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0) + body


def parse_mark_rules(data: bytes) -> tuple[list[tuple[int, int]], bool]:
    """The (fwmark, table) of every rule with a firewall mark in one datagram of an RTM_GETRULE dump, and
    whether the dump ended in it (NLMSG_DONE or an error)."""
    found: list[tuple[int, int]] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, _, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            return found, True
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return found, True
        if kind == RTM_NEWRULE and length >= _HEADER.size + _RULE.size:
            table = _RULE.unpack_from(data, offset + _HEADER.size)[4]
            mark = None
            at = offset + _HEADER.size + _RULE.size
            while at + _ATTRIBUTE.size <= offset + length:
                size, attribute = _ATTRIBUTE.unpack_from(data, at)
                if size < _ATTRIBUTE.size:
                    break
                if size >= _ATTRIBUTE.size + 4 and attribute in (FRA_FWMARK, FRA_TABLE):
                    (value,) = struct.unpack_from("=I", data, at + _ATTRIBUTE.size)
                    if attribute == FRA_FWMARK:
                        mark = value
                    else:
                        table = value
                at += (size + 3) & ~3
            if mark:
                found.append((mark, table))
        offset += (length + 3) & ~3
    return found, False


def mark_rules(sock: socket.socket, family: int) -> list[tuple[int, int]]:
    """The (fwmark, table) of every policy rule of `family` that matches a firewall mark."""
    sock.send(rules_dump_request(family))
    rules: list[tuple[int, int]] = []
    done = False
    while not done:
        found, done = parse_mark_rules(sock.recv(65536))
        rules += found
    return rules


def mark_routing_text(family: int, table: int = TABLE, mark: int = 1) -> str:
    """The `ip` commands that deliver datagrams a tproxy rule marked `mark` to this host (README's recipe)."""
    ip = "ip -6" if family == socket.AF_INET6 else "ip"
    everything = "::/0" if family == socket.AF_INET6 else "0.0.0.0/0"
    rule = f"{ip} rule add fwmark {mark} lookup {table}"
    return f"`{rule}` and `{ip} route add local {everything} dev lo table {table}`"


def mark_routing_warning(family: int) -> str | None:
    """A one-line warning when no firewall mark would deliver a tproxy'd datagram of `family` to this
    host's sockets (no `fwmark` rule, or none whose table routes everything `local` via lo), naming what is
    missing; None when one would. The nft tproxy rule itself is not visible without CAP_NET_ADMIN."""
    client = SAMPLE_CLIENTS[family][0]
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.settimeout(2)
        rules = mark_rules(sock, family)
        for sequence, (mark, _) in enumerate(rules, start=2):
            if ask(sock, route_query(family, client, sequence=sequence, mark=mark)).local:
                return None
    name = "IPv6" if family == socket.AF_INET6 else "IPv4"
    if not rules:
        return (
            f"tproxy: no {name} policy rule matches a firewall mark, so datagrams a tproxy rule steers "
            f"would be routed on instead of reaching this host's sockets: add {mark_routing_text(family)}"
        )
    mark, table = rules[0]
    return (
        f"tproxy: the {name} rules for firewall marks ({', '.join(hex(m) for m, _ in rules)}) lead to no "
        f"local route, so steered datagrams would not reach this host's sockets: add "
        f"{mark_routing_text(family, table, mark).split(' and ')[1]}"
    )


def _interface(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"interface {index}"
