"""The host's routing for the forwarder's reply relay (`--reply relay`): a policy rule that sends only the
backend's replies to a route table whose one route is `local`, so the host delivers them to the forwarder's
per-flow sockets instead of forwarding them to the clients; the backend's other traffic keeps the main
table. Made with pyroute2 (no `ip` shell-outs), in both families; the README has the `ip` twins.

    ip rule add from BACKEND ipproto udp sport PORT lookup TABLE      (a backend on another host)
    ip rule add from 127.0.0.0/8 iif lo lookup TABLE                  (a backend on the host itself)
    ip route add local 0.0.0.0/0 dev lo table TABLE                   (and ::/0 for IPv6)
"""

import contextlib
import errno
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from netlab.lab import netns
from netlab.lab.node import LabNode

RELAY_TABLE = 100
RELAY_PRIORITY = 100  # before the main table's rule (32766)
IPPROTO_UDP = 17


@dataclass(frozen=True)
class RelayRoute:
    """One installed relay routing: the rule's keywords (pyroute2) and the table's local route."""

    node: LabNode
    family: int
    rule: dict[str, object]
    table: int

    def remove(self) -> None:
        """Delete the rule and the table's local route (what is already gone is not an error)."""
        if not netns.exists(self.node.namespace):  # IPRoute(netns=) would make the namespace again
            return
        with IPRoute(netns=self.node.namespace) as ipr:
            with contextlib.suppress(NetlinkError, OSError):
                ipr.rule("del", **self.rule)
            with contextlib.suppress(NetlinkError, OSError):
                ipr.route("del", **local_route(self.family, self.table, _loopback(ipr)))


def relay_rule(
    backend: str,
    port: int | None = None,
    *,
    table: int = RELAY_TABLE,
    priority: int = RELAY_PRIORITY,
    udp_only: bool = True,
) -> dict[str, object]:
    """The policy rule (pyroute2 keywords) that sends `backend`'s replies to `table`.

    A loopback `backend` is the host itself: its replies are locally generated, so the rule matches them
    by source and `iif lo` (output lookups), as go-mmproxy documents. Otherwise the rule matches the
    backend's address, UDP, and when given its source `port` (only the replies; not its other traffic);
    `udp_only=False` makes the rule match everything from the backend (what `netlab doctor` warns of)."""
    address = ipaddress.ip_address(backend)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    rule: dict[str, object] = {"family": family, "table": table, "priority": priority}
    if address.is_loopback:
        rule.update(src=str(address) if address.version == 6 else "127.0.0.0", iifname="lo")
        rule["src_len"] = 128 if address.version == 6 else 8
        return rule
    rule.update(src=str(address), src_len=address.max_prefixlen)
    if udp_only:
        rule["ip_proto"] = IPPROTO_UDP
        if port is not None:
            rule["sport_range"] = f"{port}:{port}"
    return rule


def local_route(family: int, table: int, loopback: int) -> dict[str, object]:
    """The table's one route: everything is local (delivered to this host's sockets)."""
    return {
        "family": family,
        "dst": "0.0.0.0" if family == socket.AF_INET else "::",
        "dst_len": 0,
        "type": "local",
        "scope": "host",
        "oif": loopback,
        "table": table,
    }


def _loopback(ipr: IPRoute) -> int:
    return int(ipr.link_lookup(ifname="lo")[0])


def _add_local_route(ipr: IPRoute, family: int, table: int) -> None:
    """Add the table's local route, unless another rule's installation added it already."""
    try:
        ipr.route("add", **local_route(family, table, _loopback(ipr)))
    except NetlinkError as error:
        if error.code != errno.EEXIST:
            raise


def install_relay_route(
    host: LabNode,
    backend: str,
    port: int | None = None,
    *,
    table: int = RELAY_TABLE,
    priority: int = RELAY_PRIORITY,
    udp_only: bool = True,
    with_route: bool = True,
) -> RelayRoute:
    """Route `backend`'s replies (from `port`, when given) to the forwarder's sockets on `host`; removed
    when the lab closes. `with_route=False` installs only the rule (a broken set-up, for the doctor)."""
    rule = relay_rule(backend, port, table=table, priority=priority, udp_only=udp_only)
    family = int(rule["family"])  # type: ignore[call-overload]
    installed = RelayRoute(host, family, rule, table)
    host.lab.defer(installed.remove)  # registered before anything is made
    with IPRoute(netns=host.namespace) as ipr:
        if with_route:
            _add_local_route(ipr, family, table)
        ipr.rule("add", **rule)
    return installed


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
) -> list[RelayRoute]:
    """Deliver the ICMP errors of `backends` (arriving on `interface`, when given) to the forwarder's flow
    sockets on `host` (both modes: that is how a stopped backend is seen), with backend_errors_ruleset()
    and a fwmark rule per family."""
    path = host.lab.workdir / f"{host.name}-relay-errors-{host.lab.next_serial()}.nft"
    path.write_text(backend_errors_ruleset(backends, interface=interface))
    host.check(["nft", "-f", str(path)])
    installed = []
    families = sorted(
        {socket.AF_INET if ipaddress.ip_address(b).version == 4 else socket.AF_INET6 for b in backends}
    )
    for family in families:
        rule: dict[str, object] = {
            "family": family,
            "fwmark": ERRORS_MARK,
            "table": table,
            "priority": priority,
        }
        route = RelayRoute(host, family, rule, table)
        host.lab.defer(route.remove)
        with IPRoute(netns=host.namespace) as ipr:
            _add_local_route(ipr, family, table)
            ipr.rule("add", **rule)
        installed.append(route)
    return installed


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


__all__ = [
    "RELAY_TABLE",
    "RelayRoute",
    "backend_errors_ruleset",
    "enable_reassembly",
    "install_relay_route",
    "local_route",
    "reassembly_ruleset",
    "relay_rule",
    "route_backend_errors",
]
