"""Topologies as data: nodes (network namespaces), veth links with addresses, routes and sysctls.

Built from Python code here; validated before anything is created, with errors that name the element
and the bad value.
"""

import ipaddress
from dataclasses import dataclass, field

from netlab.errors import TopologyError
from netlab.names import IFNAMSIZ

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


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


@dataclass
class Route:
    """A route in `node`: `destination` (CIDR or 'default'/'default6') via a gateway address."""

    node: str
    destination: str
    via: str


@dataclass
class Node:
    """A network namespace with its sysctls."""

    name: str
    sysctls: dict[str, str] = field(default_factory=dict)


@dataclass
class Topology:
    """Nodes, links and routes; methods add to it and return it so a topology reads as one expression."""

    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    source: str = "<code>"

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
    ) -> "Topology":
        """Connect nodes `a` and `b` with a veth pair; interfaces default to 'to-<peer>'."""
        self.links.append(
            Link(
                Endpoint(a, a_ifname or f"to-{b}"[:IFNAMSIZ], list(a_addresses or [])),
                Endpoint(b, b_ifname or f"to-{a}"[:IFNAMSIZ], list(b_addresses or [])),
                mtu,
            )
        )
        return self

    def route(self, node: str, destination: str, via: str) -> "Topology":
        """Add a route in `node`."""
        self.routes.append(Route(node, destination, via))
        return self

    def _require_node(self, node: str, element: str) -> None:
        if node not in self.nodes:
            raise TopologyError(
                f"{self.source}: {element} names unknown node {node!r}; known nodes: {sorted(self.nodes)}"
            )

    def validate(self) -> None:
        """Raise TopologyError for the first thing that cannot be built."""
        seen_addresses: dict[str, str] = {}
        for link in self.links:
            for end in (link.a, link.b):
                element = f"link {link.a.node}<->{link.b.node}"
                self._require_node(end.node, element)
                if not end.ifname or len(end.ifname) > IFNAMSIZ:
                    raise TopologyError(
                        f"{self.source}: {element}: interface name {end.ifname!r} must be 1 to "
                        f"{IFNAMSIZ} characters"
                    )
                for text in end.addresses:
                    interface = parse_interface(text, f"{self.source}: {element}")
                    address = str(interface.ip)
                    if address in seen_addresses:
                        raise TopologyError(
                            f"{self.source}: {element}: address {text!r} is already used on "
                            f"{seen_addresses[address]}"
                        )
                    seen_addresses[address] = f"{end.node}/{end.ifname}"
            if link.mtu is not None and not 68 <= link.mtu <= 65535:
                raise TopologyError(f"{self.source}: link mtu {link.mtu!r} must be from 68 to 65535")
        for route in self.routes:
            self._require_node(route.node, f"route {route.destination!r}")
            if route.destination not in ("default", "default6"):
                try:
                    ipaddress.ip_network(route.destination)
                except ValueError:
                    raise TopologyError(
                        f"{self.source}: route in {route.node!r}: bad destination {route.destination!r}: "
                        "expected a CIDR network or 'default'"
                    ) from None
            try:
                ipaddress.ip_address(route.via)
            except ValueError:
                raise TopologyError(
                    f"{self.source}: route in {route.node!r}: bad gateway {route.via!r}: expected an address"
                ) from None


def parse_interface(text: str, element: str) -> Interface:
    """Parse 'ADDRESS/PREFIX' with a readable error naming `element`."""
    if "/" not in text:
        raise TopologyError(f"{element}: address {text!r} needs a prefix length, e.g. 192.0.2.1/24")
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        raise TopologyError(f"{element}: bad address {text!r}: expected ADDRESS/PREFIX") from None
