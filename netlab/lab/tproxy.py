"""Steering UDP into one socket with nftables `tproxy` (the kernel's transparent proxying): the one home of
it in netlab, for port ranges on one listening socket and for the forwarder's one reply socket.

A steering is three pieces in a node, all needed, each removable on its own:
- an nft table (`ip`/`ip6 netlab_tproxy_<n>`) whose prerouting rule (mangle priority) matches UDP by the
  selectors given and does `meta mark set M tproxy to :PORT`: the datagram is assigned to the socket bound
  to PORT (IP_TRANSPARENT) with its destination unchanged;
- `ip rule add fwmark M lookup T` and `ip route add local 0.0.0.0/0 dev lo table T` (`::/0` for IPv6), so
  the marked datagram is delivered locally instead of being forwarded.
The socket reads the destination the client used from IP_ORIGDSTADDR / IPV6_ORIGDSTADDR. Rules and routes are
made with pyroute2, the ruleset with `nft -f` (netlab.lab.nft); `tproxy_commands` spells the same as the
commands an operator types.
"""

import contextlib
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from forwarder.io.sockets import set_receive_origdst, set_transparent
from netlab.errors import AddressError, ProcessFailedError
from netlab.lab import netns
from netlab.lab.netlink import EEXIST, remove_rules_and_routes, tolerate
from netlab.lab.nft import apply_ruleset, delete_table
from netlab.lab.node import LabNode

TABLE_PREFIX = "netlab_tproxy_"
MARK_BASE = 0x7470_0000  # "tp": far from the marks other netlab rules use
ROUTE_TABLE_BASE = 7000
RULE_PRIORITY = 90  # ahead of the relay rules (100) and the main table (32766)
RT_SCOPE_HOST = 254
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_NFT_FAMILY = {4: "ip", 6: "ip6"}
_EVERYTHING = {4: "0.0.0.0/0", 6: "::/0"}

Ports = int | tuple[int, int] | Sequence[int | tuple[int, int]]


def _port_set(ports: Ports, what: str) -> str:
    """nft's spelling of a port, a (first, last) range or a list of them: `27000`, `27000-27050`,
    `{ a, b }`."""
    items: Sequence[Any] = [ports] if isinstance(ports, int | tuple) else ports
    texts = []
    for item in items:
        first, last = (item, item) if isinstance(item, int) else item
        for port in (first, last):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise AddressError(f"tproxy {what} {item!r}: expected a port or (first, last) of 1 to 65535")
        if first > last:
            raise AddressError(f"tproxy {what} {item!r}: the first port is above the last")
        texts.append(str(first) if first == last else f"{first}-{last}")
    if not texts:
        raise AddressError(f"tproxy {what}: expected at least one port")
    return texts[0] if len(texts) == 1 else "{ " + ", ".join(texts) + " }"


def _network(text: str, version: int, what: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise AddressError(f"tproxy {what} {text!r}: expected an address or a network") from None
    if network.version != version:
        raise AddressError(
            f"tproxy {what} {text!r}: expected an IPv{version} address for a version {version} steering"
        )
    return str(network.network_address) if network.prefixlen == network.max_prefixlen else str(network)


def tproxy_rule(  # noqa: PLR0913 - keyword-only: the selectors of one rule
    version: int,
    to_port: int,
    *,
    mark: int = 1,
    dports: Ports | None = None,
    daddr: str | None = None,
    saddr: str | None = None,
    sports: Ports | None = None,
    iifname: str | None = None,
) -> str:
    """The nft rule (one line, for a prerouting chain of an `ip`/`ip6` table) steering matching UDP to the
    socket bound to `to_port`."""
    if version not in _FAMILY:
        raise AddressError(f"tproxy version {version!r}: expected 4 or 6")
    _port_set(to_port, "to_port")
    ip = _NFT_FAMILY[version]
    parts = [f'iifname "{iifname}"'] if iifname else []
    if saddr is not None:
        parts.append(f"{ip} saddr {_network(saddr, version, 'saddr')}")
    if daddr is not None:
        parts.append(f"{ip} daddr {_network(daddr, version, 'daddr')}")
    parts.append("meta l4proto udp")
    if sports is not None:
        parts.append(f"udp sport {_port_set(sports, 'sports')}")
    if dports is not None:
        parts.append(f"udp dport {_port_set(dports, 'dports')}")
    parts.append(f"meta mark set {mark:#x} tproxy to :{to_port} accept")
    return " ".join(parts)


def tproxy_ruleset(nft_table: str, version: int, rule: str) -> str:
    """A whole nft table holding `rule` in a prerouting chain at mangle priority."""
    return (
        f"table {_NFT_FAMILY[version]} {nft_table} {{\n"
        "    chain prerouting {\n"
        "        type filter hook prerouting priority mangle; policy accept;\n"
        f"        {rule}\n"
        "    }\n"
        "}\n"
    )


def tproxy_commands(
    version: int,
    to_port: int,
    *,
    mark: int = 1,
    table: int = 100,
    nft_table: str = "transparent_udp_forwarder",
    **selectors: Any,
) -> list[str]:
    """The commands an operator types for the same steering: the nft table, the mark rule, the local route."""
    ip = "ip" if version == 4 else "ip -6"
    rule = tproxy_rule(version, to_port, mark=mark, **selectors)
    return [
        f"nft add table {_NFT_FAMILY[version]} {nft_table}",
        f"nft 'add chain {_NFT_FAMILY[version]} {nft_table} prerouting "
        "{ type filter hook prerouting priority mangle; policy accept; }'",
        f"nft add rule {_NFT_FAMILY[version]} {nft_table} prerouting {rule}",
        f"{ip} rule add fwmark {mark:#x} lookup {table}",
        f"{ip} route add local {_EVERYTHING[version]} dev lo table {table}",
    ]


@dataclass
class TproxySteering:
    """What one steer() call added to a node; `remove()` takes it out again (safe to run twice)."""

    node: LabNode
    version: int
    mark: int
    table: int
    nft_table: str
    commands: list[str]
    nft_loaded: bool = False
    rules: list[dict[str, Any]] = field(default_factory=list)
    routes: list[dict[str, Any]] = field(default_factory=list)

    def remove(self) -> None:
        """Delete the nft table, the mark rule and the local route; what is already gone is no error."""
        if not netns.exists(self.node.namespace):  # its nft table went with it
            self.nft_loaded = False
        if self.nft_loaded:
            with contextlib.suppress(ProcessFailedError):  # already deleted by hand: nothing to do
                delete_table(self.node, _NFT_FAMILY[self.version], self.nft_table)
            self.nft_loaded = False
        remove_rules_and_routes(self.node.namespace, self.rules, self.routes)


def steer(  # noqa: PLR0913 - keyword-only: the selectors of one steering and the pieces to leave out
    node: LabNode,
    *,
    version: int,
    to_port: int,
    dports: Ports | None = None,
    daddr: str | None = None,
    saddr: str | None = None,
    sports: Ports | None = None,
    iifname: str | None = None,
    rule: bool = True,
    route: bool = True,
    nft: bool = True,
    label: str = "tproxy",
) -> TproxySteering:
    """Steer UDP arriving at `node` that matches the selectors to its socket bound to `to_port`; the mark
    and route table are this steering's own. `rule`, `route` and `nft` False leave that piece out (a broken
    set-up, for the doctor). Removed when the lab closes, or by the result's remove()."""
    serial = node.lab.next_serial()
    mark, table, nft_table = MARK_BASE + serial, ROUTE_TABLE_BASE + serial, f"{TABLE_PREFIX}{serial}"
    selectors: dict[str, Any] = {
        "dports": dports,
        "daddr": daddr,
        "saddr": saddr,
        "sports": sports,
        "iifname": iifname,
    }
    nft_rule = tproxy_rule(version, to_port, mark=mark, **selectors)
    commands = tproxy_commands(version, to_port, mark=mark, table=table, nft_table=nft_table, **selectors)
    steering = TproxySteering(node, version, mark, table, nft_table, commands)
    node.lab.defer(steering.remove)
    if nft:
        apply_ruleset(node, tproxy_ruleset(nft_table, version, nft_rule), label=label)
        steering.nft_loaded = True
    family = _FAMILY[version]
    with IPRoute(netns=node.namespace) as ipr:
        if route:
            local = {
                "dst": "0.0.0.0" if version == 4 else "::",
                "dst_len": 0,
                "family": family,
                "type": "local",
                "scope": RT_SCOPE_HOST,
                "table": table,
                "oif": ipr.link_lookup(ifname="lo")[0],
            }
            if tolerate(lambda: ipr.route("add", **local), EEXIST):
                steering.routes.append(local)
        if rule:
            mark_rule = {"family": family, "fwmark": mark, "table": table, "priority": RULE_PRIORITY}
            ipr.rule("add", **mark_rule)
            steering.rules.append(mark_rule)
    return steering


def transparent_socket(node: LabNode, version: int, port: int, *, dual_stack: bool = False) -> socket.socket:
    """A UDP socket in `node` that tproxy can steer to: IP_TRANSPARENT, original destinations reported
    (IP_ORIGDSTADDR), bound to the wildcard address and `port` (`dual_stack`: an IPv6 socket taking IPv4
    too). The lab closes it."""
    sock = node.open_socket(_FAMILY[version], socket.SOCK_DGRAM)
    if version == 6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
    set_transparent(sock)
    set_receive_origdst(sock)
    sock.bind(("0.0.0.0" if version == 4 else "::", port))
    return sock


__all__ = [
    "TproxySteering",
    "steer",
    "tproxy_commands",
    "tproxy_rule",
    "tproxy_ruleset",
    "transparent_socket",
]
