"""The relay reply path (`forwarder --reply relay`): policy routing on the host that delivers the backend's
replies to the forwarder's per-flow sockets instead of forwarding them to the client. The one home of
netlab's relay routing: scenarios, the doctor, the demo, the tests and the bench all use it.

A rule picks only the replies (from the backend's address, UDP, from the ports it serves) and sends them
to a table whose one route is `local 0.0.0.0/0 dev lo` (`local ::/0 dev lo` for IPv6), so the kernel
delivers them locally, where an unconnected IP_TRANSPARENT socket bound to the client's address and port
receives them. The backend's other traffic (other ports, TCP, ICMP) keeps the main table. A backend on
the host itself needs go-mmproxy's form instead: `from 127.0.0.0/8 iif lo lookup N` (and `::1`); with the
one reply socket (--reply-tproxy), install_local_relay_tproxy's.
Everything is done with pyroute2 inside the node and recorded in one RelayRouting, removed when the lab
closes (or by its remove()); `relay_commands` spells the same as `ip` commands.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import AsyncIPRoute, IPRoute
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETROUTE
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from forwarder.io.sockets import set_transparent
from netlab.errors import AddressError
from netlab.lab import netns
from netlab.lab.netlink import EEXIST, remove_rules_and_routes, tolerate
from netlab.lab.nft import apply_ruleset
from netlab.lab.node import LabNode
from netlab.lab.tproxy import (
    MARK_BASE,
    ROUTE_TABLE_BASE,
    TABLE_PREFIX,
    TproxySteering,
    steer,
    tproxy_commands,
    tproxy_rule,
    tproxy_ruleset,
)

RELAY_TABLE = 100
NFT_TABLE = "transparent_udp_forwarder_replies"  # the README recipe's (not `tproxy`: an nft keyword)
RELAY_PRIORITY = 100  # ahead of the main table's rule (32766)
RTN_LOCAL = 2
RT_SCOPE_HOST = 254
RTM_F_LOOKUP_TABLE = 0x1000
IPPROTO_UDP = 17
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_LOCAL_SOURCES = {4: "127.0.0.0/8", 6: "::1/128"}
ROUTE_TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable", 8: "prohibit"}

PortRange = tuple[int, int]


def port_ranges(ports: int | PortRange | Sequence[int | PortRange]) -> list[PortRange]:
    """Normalize a port, a (first, last) range or a list of them to ranges; AddressError on a bad one."""
    items: Sequence[Any] = [ports] if isinstance(ports, int | tuple) else ports
    ranges = []
    for item in items:
        first, last = (item, item) if isinstance(item, int) else item
        for port in (first, last):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise AddressError(f"relay port {item!r}: expected a port or (first, last) of 1 to 65535")
        if first > last:
            raise AddressError(f"relay port range {item!r}: the first port is above the last")
        ranges.append((first, last))
    if not ranges:
        raise AddressError("relay routing needs at least one backend port")
    return ranges


def _ip(version: int) -> str:
    return "ip" if version == 4 else "ip -6"


def _source(backend: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(backend, strict=False)
    except ValueError:
        raise AddressError(f"relay backend {backend!r}: expected an address or a network") from None


def _sport(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def local_route_command(version: int, table: int = RELAY_TABLE) -> str:
    """`ip route add local 0.0.0.0/0 dev lo table N` (or its IPv6 twin)."""
    return f"{_ip(version)} route add local {'0.0.0.0/0' if version == 4 else '::/0'} dev lo table {table}"


def rule_command(
    backend: str, first: int, last: int, table: int = RELAY_TABLE, shown_port: str | int | None = None
) -> str:
    """`ip rule add from BACKEND ipproto udp sport PORT[-LAST] lookup N` (or its IPv6 twin); `shown_port`
    replaces the port text (a placeholder when the port is not known)."""
    source = _source(backend)
    shown = str(source.network_address) if source.prefixlen == source.max_prefixlen else str(source)
    sport = _sport(first, last) if shown_port is None else str(shown_port)
    return f"{_ip(source.version)} rule add from {shown} ipproto udp sport {sport} lookup {table}"


def relay_commands(
    backend: str, ports: int | PortRange | Sequence[int | PortRange], table: int = RELAY_TABLE
) -> list[str]:
    """The `ip` commands an operator types for the relay routing of `backend`'s replies from `ports`."""
    version = _source(backend).version
    rules = [rule_command(backend, first, last, table) for first, last in port_ranges(ports)]
    return [*rules, local_route_command(version, table)]


def local_backend_commands(version: int, table: int = RELAY_TABLE) -> list[str]:
    """go-mmproxy's routing for a backend on the host itself (`--net=host`): loopback-sourced traffic."""
    return [
        f"{_ip(version)} rule add from {_LOCAL_SOURCES[version]} iif lo lookup {table}",
        local_route_command(version, table),
    ]


@dataclass
class RelayRouting:
    """The rules (and local routes) one install_* call added to a node; `remove()` takes them out again."""

    node: LabNode
    commands: list[str]
    rules: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)

    def remove(self) -> None:
        """Delete what was added (rules first, then the local routes this call created); what is already
        gone (a rule, a route, the whole node) is not an error, so it may run twice."""
        remove_rules_and_routes(self.node.namespace, self.rules, self.routes)


def local_route(family: int, table: int, loopback: int) -> dict[str, Any]:
    """The relay table's one route (pyroute2 keywords): everything is local, delivered to this host's
    sockets; `loopback` is the index of `lo`."""
    return {
        "dst": "0.0.0.0" if family == socket.AF_INET else "::",
        "dst_len": 0,
        "family": family,
        "type": "local",
        "scope": RT_SCOPE_HOST,
        "table": table,
        "oif": loopback,
    }


def _add(  # noqa: PLR0913 - the fields of one routing record
    ipr: IPRoute,
    routing: "RelayRouting",
    family: int,
    rules: list[dict[str, Any]],
    table: int,
    *,
    with_route: bool = True,
) -> None:
    """Add the table's local route (unless there, or `with_route` is False) and `rules`, recording each in
    `routing` as it is made."""
    if with_route:
        route = local_route(family, table, ipr.link_lookup(ifname="lo")[0])
        if tolerate(lambda: ipr.route("add", **route), EEXIST):
            routing.routes.append(route)
    for selector in rules:
        rule = {"family": family, "table": table, **selector}
        ipr.rule("add", **rule)
        routing.rules.append(rule)


def _new_routing(node: LabNode, commands: list[str]) -> "RelayRouting":
    """An empty record, registered for removal when the lab closes before anything is made."""
    routing = RelayRouting(node, commands)
    node.lab.defer(routing.remove)
    return routing


def install_relay_routing(
    node: LabNode,
    backend: str,
    ports: int | PortRange | Sequence[int | PortRange],
    *,
    table: int = RELAY_TABLE,
    priority: int = RELAY_PRIORITY,
) -> RelayRouting:
    """Route `backend`'s UDP replies from `ports` into `node` itself (table `table`, rules at `priority`).

    `backend` is an address (or a network of backends); call once per family for a dual-stack backend.
    Only UDP from those source ports is picked: the backend's own lookups and other traffic still leave
    through the main table.
    """
    source = _source(backend)
    ranges = port_ranges(ports)
    routing = _new_routing(node, relay_commands(backend, ranges, table))
    rules = [
        {
            "src": str(source.network_address),
            "src_len": source.prefixlen,
            "ip_proto": IPPROTO_UDP,
            "sport_range": f"{first}:{last}",
            "priority": priority,
        }
        for first, last in ranges
    ]
    with IPRoute(netns=node.namespace) as ipr:
        _add(ipr, routing, _FAMILY[source.version], rules, table)
    return routing


def install_local_relay_routing(
    node: LabNode,
    *,
    versions: Sequence[int] = (4, 6),
    table: int = RELAY_TABLE,
    priority: int = RELAY_PRIORITY,
) -> RelayRouting:
    """go-mmproxy's routing for a backend on `node` itself: traffic from loopback sources that the host
    sends (`iif lo`) is delivered locally, so a reply from 127.0.0.1:5353 reaches the per-flow socket."""
    routing = _new_routing(node, [c for version in versions for c in local_backend_commands(version, table)])
    with IPRoute(netns=node.namespace) as ipr:
        for version in versions:
            source = ipaddress.ip_network(_LOCAL_SOURCES[version])
            rule = {
                "src": str(source.network_address),
                "src_len": source.prefixlen,
                "iifname": "lo",
                "priority": priority,
            }
            _add(ipr, routing, _FAMILY[version], [rule], table)
    return routing


def relay_rule(
    backend: str,
    port: int | None = None,
    *,
    table: int = RELAY_TABLE,
    priority: int = RELAY_PRIORITY,
    udp_only: bool = True,
) -> dict[str, Any]:
    """The policy rule (pyroute2 keywords) that sends `backend`'s replies to `table`.

    A loopback `backend` is the host itself: its replies are locally generated, so the rule matches them
    by source and `iif lo` (output lookups), as go-mmproxy documents. Otherwise the rule matches the
    backend's address, UDP, and when given its source `port` (only the replies; not its other traffic);
    `udp_only=False` makes the rule match everything from the backend (what `netlab doctor` warns of)."""
    address = ipaddress.ip_address(backend)
    rule: dict[str, Any] = {"family": _FAMILY[address.version], "table": table, "priority": priority}
    if address.is_loopback:
        source = ipaddress.ip_network(_LOCAL_SOURCES[address.version])
        rule.update(src=str(source.network_address), src_len=source.prefixlen, iifname="lo")
        return rule
    rule.update(src=str(address), src_len=address.max_prefixlen)
    if udp_only:
        rule["ip_proto"] = IPPROTO_UDP
        if port is not None:
            rule["sport_range"] = f"{port}:{port}"
    return rule


def _rule_commands(backend: str, port: int | None, table: int, udp_only: bool) -> list[str]:
    """The `ip` commands relay_rule()'s rule and its table's route spell."""
    address = ipaddress.ip_address(backend)
    if address.is_loopback:
        return local_backend_commands(address.version, table)
    if udp_only and port is not None:
        return relay_commands(backend, port, table)
    selector = " ipproto udp" if udp_only else ""
    rule = f"{_ip(address.version)} rule add from {address}{selector} lookup {table}"
    return [rule, local_route_command(address.version, table)]


def install_relay_route(  # noqa: PLR0913 - the fields of one relay route
    host: LabNode,
    backend: str,
    port: int | None = None,
    *,
    table: int = RELAY_TABLE,
    priority: int = RELAY_PRIORITY,
    udp_only: bool = True,
    with_route: bool = True,
) -> RelayRouting:
    """Route `backend`'s replies (from `port`, when given; relay_rule() says which) to the forwarder's
    sockets on `host`. `with_route=False` installs only the rule (a broken set-up, for the doctor)."""
    rule = relay_rule(backend, port, table=table, priority=priority, udp_only=udp_only)
    family = rule.pop("family")
    rule.pop("table")
    routing = _new_routing(host, _rule_commands(backend, port, table, udp_only))
    with IPRoute(netns=host.namespace) as ipr:
        _add(ipr, routing, family, [rule], table, with_route=with_route)
    return routing


# A local backend's replies to this host's own clients are not steered.
NOT_LOCAL = "fib daddr type != local "


def _on_host(backend: str, on_host: bool | None) -> bool:
    """Whether `backend` is on the host itself, whose replies are the host's own output: as `on_host` says,
    or (None) when it is a loopback address (`--net=host`)."""
    return _source(backend).network_address.is_loopback if on_host is None else on_host


def local_tproxy_rule(rule: str) -> str:
    """A tproxy rule (netlab.lab.tproxy.tproxy_rule) made fit for a backend on the host: it leaves alone the
    replies to the host's own addresses (`fib daddr type != local`), which its local clients (a resolver
    asking 127.0.0.1, say) are waiting for; tproxy would otherwise hand them, on an unconnected socket,
    to the reply socket instead."""
    return rule.replace("meta mark set ", NOT_LOCAL + "meta mark set ", 1)


def local_tproxy_rule_commands(backend: str, ranges: Sequence[PortRange], table: int) -> list[str]:
    """`ip rule add from BACKEND iif lo ipproto udp sport PORT lookup N` for each range (or the IPv6 twin):
    the backend's own output toward a client is routed back in through lo instead of out (or refused)."""
    source = _source(backend)
    shown = str(source.network_address) if source.prefixlen == source.max_prefixlen else str(source)
    return [
        f"{_ip(source.version)} rule add from {shown} iif lo ipproto udp sport {_sport(first, last)} "
        f"lookup {table}"
        for first, last in ranges
    ]


def _local_tproxy_commands(  # noqa: PLR0913 - keyword-only: the fields of one recipe
    backend: str,
    ranges: Sequence[PortRange],
    reply_port: int,
    *,
    mark: int,
    table: int,
    nft_table: str,
) -> list[str]:
    """The local form of relay_tproxy_commands: the nft rule on `iifname "lo"` (not for the host's own
    addresses), the loopback rule that brings the replies there, and the local route; no fwmark rule (a
    reply coming back in through lo keeps the local route it was sent by)."""
    source = _source(backend)
    steering = tproxy_commands(
        source.version,
        reply_port,
        mark=mark,
        table=table,
        nft_table=nft_table,
        saddr=backend,
        sports=ranges,
        iifname="lo",
    )
    return [
        *steering[:2],
        local_tproxy_rule(steering[2]),
        *local_tproxy_rule_commands(backend, ranges, table),
        steering[4],
    ]


def relay_tproxy_commands(  # noqa: PLR0913 - keyword-only: the fields of one recipe
    backend: str,
    ports: int | PortRange | Sequence[int | PortRange],
    reply_port: int,
    *,
    interface: str | None = None,
    mark: int = 1,
    table: int = RELAY_TABLE,
    on_host: bool | None = None,
) -> list[str]:
    """The commands an operator types for the tproxy variant of the relay routing (`forwarder --reply relay
    --reply-tproxy PORT`): an nft rule steering `backend`'s UDP replies from `ports` (arriving on
    `interface`, the host's link toward the backends, when given) to the one reply socket on `reply_port`,
    with the fwmark rule and local route that deliver them (the README's recipe). For a backend on the host
    itself (a loopback address, or `on_host=True` for one of the host's own addresses) the local form
    instead: the rule on `lo`, and the loopback rule in place of the fwmark rule (`interface` does not
    apply)."""
    source = _source(backend)
    if _on_host(backend, on_host):
        return _local_tproxy_commands(
            backend, port_ranges(ports), reply_port, mark=mark, table=table, nft_table=NFT_TABLE
        )
    return tproxy_commands(
        source.version,
        reply_port,
        mark=mark,
        table=table,
        nft_table=NFT_TABLE,
        saddr=backend,
        sports=port_ranges(ports),
        iifname=interface,
    )


def install_relay_tproxy(  # noqa: PLR0913 - keyword-only: the fields of one steering
    node: LabNode,
    backend: str,
    ports: int | PortRange | Sequence[int | PortRange],
    reply_port: int,
    *,
    interface: str | None = None,
    rule: bool = True,
    on_host: bool | None = None,
) -> TproxySteering:
    """The tproxy variant of install_relay_routing: steer `backend`'s UDP replies from `ports` into `node`'s
    one reply socket bound to `reply_port` (the forwarder's --reply-tproxy) with netlab.lab.tproxy.steer,
    instead of to a per-flow socket. The backend's other traffic is routed as before. With `interface` (the
    host's link toward the backends) only replies arriving there are steered: anyone can spoof a backend's
    address and port, and IPv6 has no rp_filter to stop it. One call per family of a dual-stack backend;
    the result's `commands` spell it for an operator, its remove() takes it out, and the lab removes it when
    it closes. Fragmented replies need nothing more: the tproxy expression turns on the kernel's
    defragmentation, so the rule sees whole replies and their ports. A backend on `node` itself (a loopback
    address, or `on_host=True` for one of its own addresses) gets install_local_relay_tproxy's form.
    `rule=False` leaves out the fwmark rule (the loopback rule of the local form), for a broken set-up."""
    if _on_host(backend, on_host):
        return install_local_relay_tproxy(node, backend, ports, reply_port, rule=rule)
    source = _source(backend)
    return steer(
        node,
        version=source.version,
        to_port=reply_port,
        saddr=backend,
        sports=port_ranges(ports),
        iifname=interface,
        rule=rule,
        label="relay-tproxy",
    )


def install_local_relay_tproxy(
    node: LabNode,
    backend: str,
    ports: int | PortRange | Sequence[int | PortRange],
    reply_port: int,
    *,
    rule: bool = True,
) -> TproxySteering:
    """Steer the replies of a backend on `node` itself (`backend` a loopback address, `--net=host`, or one
    of the node's own addresses) from `ports` into the reply socket on `reply_port`. Its replies are the
    host's own output, which passes no prerouting: a policy rule (`from BACKEND iif lo ipproto udp sport
    PORT`, unless `rule` is False) routes them to a table whose only route is local, so they go out through
    lo and come back in there, where the nft tproxy rule (on `iifname "lo"`, not for the host's own
    addresses) hands them to the reply socket. No fwmark rule: a datagram looped through lo keeps the route
    it was sent by. Built from netlab.lab.tproxy's rule and ruleset, since steer() has no selector for "not
    to a local address"; removed like a steering."""
    source = _source(backend)
    ranges = port_ranges(ports)
    serial = node.lab.next_serial()
    mark, table, nft_table = MARK_BASE + serial, ROUTE_TABLE_BASE + serial, f"{TABLE_PREFIX}{serial}"
    commands = _local_tproxy_commands(
        backend, ranges, reply_port, mark=mark, table=table, nft_table=nft_table
    )
    steering = TproxySteering(node, source.version, mark, table, nft_table, commands)
    node.lab.defer(steering.remove)
    nft_rule = tproxy_rule(source.version, reply_port, mark=mark, saddr=backend, sports=ranges, iifname="lo")
    apply_ruleset(
        node, tproxy_ruleset(nft_table, source.version, local_tproxy_rule(nft_rule)), label="relay-tproxy"
    )
    steering.nft_loaded = True
    rules = [
        {
            "src": str(source.network_address),
            "src_len": source.prefixlen,
            "iifname": "lo",
            "ip_proto": IPPROTO_UDP,
            "sport_range": f"{first}:{last}",
            "priority": RELAY_PRIORITY,
        }
        for first, last in ranges
    ]
    with IPRoute(netns=node.namespace) as ipr:
        family = _FAMILY[source.version]
        route = local_route(family, table, ipr.link_lookup(ifname="lo")[0])
        if tolerate(lambda: ipr.route("add", **route), EEXIST):
            steering.routes.append(route)
        for selector in rules if rule else []:
            added = {"family": family, "table": table, **selector}
            ipr.rule("add", **added)
            steering.rules.append(added)
    return steering


ERRORS_TABLE = "netlab_relay_errors"
ERRORS_MARK = 0x5E1A  # fwmark of the backend's ICMP errors, routed to the relay table


def backend_errors_ruleset(backends: list[str], mark: int = ERRORS_MARK, interface: str | None = None) -> str:
    """An nftables table marking the ICMP errors `backends` send (about datagrams the forwarder sent them
    as a client, so addressed to that client): with `ip rule add fwmark MARK lookup TABLE` the host delivers
    them to the flow socket, whose error queue the forwarder reads. Only errors: the backend's own pings
    and echo replies are routed as before. With `interface` (the host's link toward the backends) only
    errors arriving there: anyone can spoof a backend's source, and IPv6 has no rp_filter to stop it."""
    rules = []
    match = f'iifname "{interface}" ' if interface is not None else ""
    for backend in backends:
        if ipaddress.ip_address(backend).version == 4:
            kinds = "destination-unreachable, time-exceeded, parameter-problem"
            rules.append(f"{match}ip saddr {backend} icmp type {{ {kinds} }} meta mark set {mark:#x}")
        else:
            kinds = "destination-unreachable, packet-too-big, time-exceeded, parameter-problem"
            rules.append(f"{match}ip6 saddr {backend} icmpv6 type {{ {kinds} }} meta mark set {mark:#x}")
    body = "".join(f"        {rule}\n" for rule in rules)
    return (
        f"table inet {ERRORS_TABLE} {{\n"
        "    chain prerouting {\n"
        "        type filter hook prerouting priority mangle; policy accept;\n"
        f"{body}"
        "    }\n"
        "}\n"
    )


def route_backend_errors(
    host: LabNode,
    backends: list[str],
    *,
    table: int = RELAY_TABLE,
    priority: int = RELAY_PRIORITY,
    interface: str | None = None,
) -> RelayRouting:
    """Deliver the ICMP errors of `backends` (arriving on `interface`, when given) to the forwarder's flow
    sockets on `host` (both modes: that is how a stopped backend is seen), with backend_errors_ruleset()
    and a fwmark rule per family."""
    path = host.lab.workdir / f"{host.name}-relay-errors-{host.lab.next_serial()}.nft"
    path.write_text(backend_errors_ruleset(backends, interface=interface))
    versions = sorted({ipaddress.ip_address(backend).version for backend in backends})
    commands = [f"{_ip(v)} rule add fwmark {ERRORS_MARK:#x} lookup {table}" for v in versions]
    routing = _new_routing(host, commands)
    host.check(["nft", "-f", str(path)])
    with IPRoute(netns=host.namespace) as ipr:
        for version in versions:
            _add(ipr, routing, _FAMILY[version], [{"fwmark": ERRORS_MARK, "priority": priority}], table)
    return routing


REASSEMBLY_TABLE = "netlab_relay_reassembly"


def reassembly_ruleset() -> str:
    """An nftables table whose one rule uses connection tracking: that makes the kernel reassemble
    fragments before routing (nf_defrag), which a port-matching relay rule needs to see a fragmented
    reply's later fragments (they carry no UDP header). Hosts with a stateful firewall have this already."""
    return (
        f"table inet {REASSEMBLY_TABLE} {{\n"
        "    chain prerouting {\n"
        "        type filter hook prerouting priority filter; policy accept;\n"
        "        ct state new,established,related,untracked counter\n"
        "    }\n"
        "}\n"
    )


def enable_reassembly(host: LabNode) -> Path:
    """Install reassembly_ruleset() in `host`; returns the ruleset file (kept in the lab's workdir)."""
    path = host.lab.workdir / f"{host.name}-reassembly-{host.lab.next_serial()}.nft"
    path.write_text(reassembly_ruleset())
    host.check(["nft", "-f", str(path)])
    return path


def flow_socket(node: LabNode, client: str, port: int) -> socket.socket:
    """A socket like the forwarder's per-flow one in relay mode: UDP, IP_TRANSPARENT, bound to the client's
    address and port in `node`, and not connected (a connected one would steal replies in direct mode);
    the lab closes it. Lets a test see where the backend's replies go without running the forwarder."""
    sock = node.open_socket(_FAMILY[ipaddress.ip_address(client).version], socket.SOCK_DGRAM)
    set_transparent(sock)
    sock.bind((client, port))
    return sock


# pyroute2's rtmsg stops at RTA_EXPIRES (23); a route query by protocol and ports needs 27 to 29.
class _PortRouteMessage(rtmsg):  # type: ignore[misc]
    # pyroute2 compiles nla_map once per class into name-mangled class attributes, which a subclass
    # inherits: without this reset, an rtmsg used first would make this class encode with its table.
    _nlmsg_base__compiled_nla = False
    nla_map = (
        *rtmsg.nla_map,
        ("RTA_PAD", "hex"),
        ("RTA_UID", "uint32"),
        ("RTA_TTL_PROPAGATE", "uint8"),
        ("RTA_IP_PROTO", "uint8"),
        ("RTA_SPORT", "be16"),
        ("RTA_DPORT", "be16"),
    )


@dataclass(frozen=True)
class RouteAnswer:
    """The kernel's route for one packet: its type ('local' means delivered to this host), table, oif."""

    type: str
    table: int | None
    oif: int | None


def route_for_packet(  # noqa: PLR0913, PLR0917 - the fields of one route query
    namespace: str | None,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    proto: int = IPPROTO_UDP,
    iif: int | None = None,
    *,
    mark: int | None = None,
) -> RouteAnswer | None:
    """Ask the kernel (RTM_GETROUTE) how it routes a packet src:sport -> dst:dport of `proto` arriving on
    interface `iif` (None: sent by the host itself), carrying firewall mark `mark` (a tproxy rule's), in
    `namespace` (None: this one); None if unroutable. The policy rules see the protocol, ports and mark, so
    this is the relay rule's (or the fwmark rule's) own verdict."""
    version = ipaddress.ip_address(dst).version
    message = _PortRouteMessage()
    message["family"] = _FAMILY[version]
    message["dst_len"] = message["src_len"] = 32 if version == 4 else 128
    attrs: list[tuple[str, Any]] = [
        ("RTA_DST", dst),
        ("RTA_SRC", src),
        ("RTA_IP_PROTO", proto),
        ("RTA_SPORT", sport),
        ("RTA_DPORT", dport),
    ]
    if iif is not None:
        attrs.append(("RTA_IIF", iif))
    if mark is not None:
        attrs.append(("RTA_MARK", mark))
    message["attrs"] = attrs

    message["flags"] = RTM_F_LOOKUP_TABLE  # answer with the table the rules chose

    async def ask() -> list[Any]:
        # In this thread's namespace: pyroute2's netns= proxy re-encodes the message with its own rtmsg,
        # which drops the protocol and port attributes.
        async with AsyncIPRoute() as ipr:
            answers = await ipr.nlm_request(message, msg_type=RTM_GETROUTE, msg_flags=NLM_F_REQUEST)
            return [answer async for answer in answers]

    try:
        if namespace is None:
            answers = asyncio.run(ask())
        else:
            answers = netns.run_in(namespace, lambda: asyncio.run(ask()))
    except NetlinkError:
        return None  # ENETUNREACH, EHOSTUNREACH, EINVAL (a martian): no route
    if not answers:
        return None
    answer = answers[0]
    return RouteAnswer(
        ROUTE_TYPES.get(answer["type"], str(answer["type"])),
        answer.get_attr("RTA_TABLE"),
        answer.get_attr("RTA_OIF"),
    )


def is_relayed(  # noqa: PLR0913, PLR0917 - the fields of one route query
    namespace: str | None, backend: str, client: str, sport: int, dport: int = 40000, iif: int | None = None
) -> bool:
    """True when a UDP reply backend:sport -> client:dport would be delivered locally (to the forwarder)."""
    answer = route_for_packet(namespace, backend, client, sport, dport, IPPROTO_UDP, iif)
    return answer is not None and answer.type == "local"


__all__ = [
    "RELAY_PRIORITY",
    "RELAY_TABLE",
    "RelayRouting",
    "RouteAnswer",
    "backend_errors_ruleset",
    "enable_reassembly",
    "flow_socket",
    "install_local_relay_routing",
    "install_local_relay_tproxy",
    "install_relay_route",
    "install_relay_routing",
    "install_relay_tproxy",
    "is_relayed",
    "local_backend_commands",
    "local_route",
    "local_tproxy_rule",
    "local_tproxy_rule_commands",
    "reassembly_ruleset",
    "relay_commands",
    "relay_rule",
    "relay_tproxy_commands",
    "route_backend_errors",
    "route_for_packet",
]
