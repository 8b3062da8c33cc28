"""Topologies as data: nodes (network namespaces), veth links with addresses and MTU, routes and sysctls.

Built from Python code here or from a TOML file (netlab.topology_file); validated before anything is
created, with errors that name the source, the element and the bad value. Only documentation address
ranges are allowed, so lab traffic can never be mistaken for (or leak into) a real network.
"""

import ipaddress
import re
from dataclasses import dataclass, field

from netlab.bridge import Bridge, BridgePort
from netlab.errors import TopologyError, UnknownNodeError
from netlab.names import IFNAMSIZ

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 5737 and RFC 3849: the only addresses a lab may use.
ALLOWED_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
    ipaddress.ip_network("2001:db8::/32"),
)
DEFAULT_ROUTES = ("default", "default6")
_NODE_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]+")
_SYSCTL = re.compile(r"(net|kernel)(\.[A-Za-z0-9_-]+)+")
NODE_NAME_MAX = 20


@dataclass
class Endpoint:
    """One end of a veth link: the node, its interface name there, and the addresses on it."""

    node: str
    ifname: str
    addresses: list[str] = field(default_factory=list)


@dataclass
class Link:
    """A veth pair between two nodes."""

    a: Endpoint
    b: Endpoint
    mtu: int | None = None
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or f"link {self.a.node}<->{self.b.node}"


@dataclass
class Route:
    """A route in `node`: `destination` (CIDR, or 'default' for the gateway's family) via a gateway."""

    node: str
    destination: str
    via: str
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or f"route {self.destination!r} in {self.node!r}"


@dataclass
class Node:
    """A network namespace with its sysctls."""

    name: str
    sysctls: dict[str, str] = field(default_factory=dict)


@dataclass
class Roles:
    """Which node plays which part of a forwarding deployment, for `netlab doctor` in lab mode.

    `host` runs the forwarder, `backend` receives from it, `clients` send to the host; `spoofed` are
    networks the clients send from without owning the addresses (crafted sources).
    """

    host: str | None = None
    backend: str | None = None
    clients: list[str] = field(default_factory=list)
    spoofed: list[str] = field(default_factory=list)


@dataclass
class Topology:
    """Nodes, links and routes; methods add to it and return it so a topology reads as one expression."""

    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    bridges: list[Bridge] = field(default_factory=list)
    source: str = "<code>"
    description: str = ""
    roles: Roles | None = None

    def node(self, name: str, **sysctls: str) -> "Topology":
        """Add a node; sysctls use underscores for dots (net_ipv4_ip_forward="1")."""
        if name in self.nodes:
            raise TopologyError(f"{self.source}: node {name!r} is defined twice")
        self.nodes[name] = Node(name, {key.replace("_", ".", 2): value for key, value in sysctls.items()})
        return self

    def sysctl(self, node: str, key: str, value: str) -> "Topology":
        """Set sysctl `key` (dotted, e.g. net.ipv4.conf.all.rp_filter) on `node`."""
        self._require_node(node, f"sysctl {key!r}")
        self.nodes[node].sysctls[key] = value
        return self

    def link(
        self,
        a: str,
        b: str,
        *,
        a_addresses: list[str] | None = None,
        b_addresses: list[str] | None = None,
        a_ifname: str | None = None,
        b_ifname: str | None = None,
        mtu: int | None = None,
        label: str = "",
    ) -> "Topology":
        """Connect nodes `a` and `b` with a veth pair; interfaces default to 'to-<peer>'."""
        self.links.append(
            Link(
                Endpoint(a, a_ifname or f"to-{b}"[:IFNAMSIZ], list(a_addresses or [])),
                Endpoint(b, b_ifname or f"to-{a}"[:IFNAMSIZ], list(b_addresses or [])),
                mtu,
                label,
            )
        )
        return self

    def bridge(
        self,
        node: str,
        ifname: str,
        ports: list[BridgePort],
        *,
        addresses: list[str] | None = None,
        mtu: int | None = None,
        label: str = "",
    ) -> "Topology":
        """A Linux bridge `ifname` in `node` with containers on it (netlab.bridge)."""
        self.bridges.append(Bridge(node, ifname, list(addresses or []), list(ports), mtu, label))
        return self

    def route(self, node: str, destination: str, via: str, *, label: str = "") -> "Topology":
        """Add a route in `node`."""
        self.routes.append(Route(node, destination, via, label))
        return self

    def ends(self) -> list[tuple[str, str, list[str]]]:
        """(node, interface, addresses) of every addressed interface: link ends, bridges and their ports."""
        ends = [(end.node, end.ifname, end.addresses) for link in self.links for end in (link.a, link.b)]
        return ends + [end for bridge in self.bridges for end in bridge.ends()]

    def addresses_of(self, node: str) -> list[str]:
        """Every address (without prefix) configured on `node`, in topology order."""
        return [
            str(ipaddress.ip_interface(text).ip)
            for name, _, addresses in self.ends()
            if name == node
            for text in addresses
        ]

    def interfaces_of(self, node: str) -> list[str]:
        """The names of `node`'s interfaces (veths, bridges), in topology order."""
        return [ifname for name, ifname, _ in self.ends() if name == node]

    def _require_node(self, node: str, element: str) -> None:
        if node not in self.nodes:
            raise UnknownNodeError(
                f"{self.source}: {element} names unknown node {node!r}; known nodes: {sorted(self.nodes)}"
            )

    def _fail(self, element: str, message: str) -> TopologyError:
        return TopologyError(f"{self.source}: {element}: {message}")

    def validate(self) -> None:
        """Raise TopologyError for the first thing that cannot (or must not) be built."""
        for node in self.nodes.values():
            if len(node.name) > NODE_NAME_MAX or not _NODE_NAME.fullmatch(node.name):
                raise self._fail(
                    f"node {node.name!r}",
                    f"bad node name {node.name!r}: expected lowercase letters, digits and '-' "
                    f"(at most {NODE_NAME_MAX} characters)",
                )
            for key in node.sysctls:
                if not _SYSCTL.fullmatch(key):
                    raise self._fail(
                        f"node {node.name!r}",
                        f"bad sysctl {key!r}: expected a dotted key like net.ipv4.ip_forward",
                    )
        seen_addresses: dict[str, str] = {}
        seen_ifnames: set[tuple[str, str]] = set()
        for link in self.links:
            for end in (link.a, link.b):
                self._require_node(end.node, link.label)
                if not end.ifname or len(end.ifname) > IFNAMSIZ or not _IFNAME.fullmatch(end.ifname):
                    raise self._fail(
                        link.label,
                        f"interface name {end.ifname!r} must be 1 to {IFNAMSIZ} characters "
                        "of letters, digits, '_', '.' and '-'",
                    )
                if (end.node, end.ifname) in seen_ifnames:
                    raise self._fail(link.label, f"node {end.node!r} already has an interface {end.ifname!r}")
                seen_ifnames.add((end.node, end.ifname))
                for text in end.addresses:
                    interface = parse_interface(text, f"{self.source}: {link.label}")
                    require_lab_address(interface.ip, f"{self.source}: {link.label}", text)
                    address = str(interface.ip)
                    if address in seen_addresses:
                        raise self._fail(
                            link.label, f"address {text!r} is already used on {seen_addresses[address]}"
                        )
                    seen_addresses[address] = f"{end.node}/{end.ifname}"
            if link.mtu is not None and (
                isinstance(link.mtu, bool) or not isinstance(link.mtu, int) or not 68 <= link.mtu <= 65535
            ):
                raise self._fail(link.label, f"mtu {link.mtu!r} must be an integer from 68 to 65535")
        for bridge in self.bridges:
            bridge.validate(self._require_node, self._fail)
            for name, ifname, addresses in bridge.ends():
                if (name, ifname) in seen_ifnames:
                    raise self._fail(bridge.label, f"node {name!r} already has an interface {ifname!r}")
                seen_ifnames.add((name, ifname))
                for text in addresses:
                    interface = parse_interface(text, f"{self.source}: {bridge.label}")
                    require_lab_address(interface.ip, f"{self.source}: {bridge.label}", text)
                    if str(interface.ip) in seen_addresses:
                        raise self._fail(
                            bridge.label,
                            f"address {text!r} is already used on {seen_addresses[str(interface.ip)]}",
                        )
                    seen_addresses[str(interface.ip)] = f"{name}/{ifname}"
        self._validate_roles()
        for route in self.routes:
            self._require_node(route.node, route.label)
            try:
                gateway = ipaddress.ip_address(route.via)
            except ValueError:
                raise self._fail(route.label, f"bad gateway {route.via!r}: expected an address") from None
            require_lab_address(gateway, f"{self.source}: {route.label}", route.via)
            if route.destination in DEFAULT_ROUTES:
                continue
            try:
                network = ipaddress.ip_network(route.destination)
            except ValueError:
                raise self._fail(
                    route.label,
                    f"bad destination {route.destination!r}: expected a CIDR network or 'default'",
                ) from None
            if network.version != gateway.version:
                raise self._fail(
                    route.label, f"gateway {route.via!r} is not in the family of {route.destination!r}"
                )
            if not any(
                network.network_address in allowed and network.broadcast_address in allowed
                for allowed in ALLOWED_NETWORKS
            ):
                raise self._fail(route.label, f"destination {route.destination!r} {_RANGES_HINT}")

    def _validate_roles(self) -> None:
        if self.roles is None:
            return
        for role in ("host", "backend"):
            name = getattr(self.roles, role)
            if name is not None:
                self._require_node(name, f"roles.{role}")
        for name in self.roles.clients:
            self._require_node(name, "roles.clients")
        for text in self.roles.spoofed:
            try:
                network = ipaddress.ip_network(text)
            except ValueError:
                raise self._fail("roles.spoofed", f"bad network {text!r}: expected a CIDR network") from None
            require_lab_address(network.network_address, f"{self.source}: roles.spoofed", text)
            require_lab_address(network.broadcast_address, f"{self.source}: roles.spoofed", text)


_RANGES_HINT = "is outside the lab's address ranges " + ", ".join(map(str, ALLOWED_NETWORKS))


def require_lab_address(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, element: str, text: str
) -> None:
    """Refuse an address outside the documentation ranges the lab may use."""
    if not any(address in network for network in ALLOWED_NETWORKS):
        raise TopologyError(f"{element}: address {text!r} {_RANGES_HINT}")


def parse_interface(text: str, element: str) -> Interface:
    """Parse 'ADDRESS/PREFIX' with a readable error naming `element`."""
    if not isinstance(text, str) or "/" not in text:
        raise TopologyError(f"{element}: address {text!r} needs a prefix length, e.g. 192.0.2.1/24")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise TopologyError(f"{element}: bad address {text!r}: expected ADDRESS/PREFIX") from None
