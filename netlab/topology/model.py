"""Topologies as data: nodes (network namespaces), veth links with addresses and MTU, devices inside a node
(a Linux bridge whose ports are link ends, as Docker's docker0), routes and sysctls.

Built from Python code here or from a TOML file (netlab.topology.file); validated before anything is
created, with errors that name the source, the element and the bad value. Only documentation address
ranges are allowed, so lab traffic can never be mistaken for (or leak into) a real network.
"""

import ipaddress
import re
from dataclasses import dataclass, field

from netlab.errors import TopologyError
from netlab.lab.names import IFNAMSIZ
from netlab.topology.networks import ALLOWED_NETWORKS
from netlab.topology.steering import Steering

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
DEFAULT_ROUTES = ("default", "default6")
_NODE_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]+")
_SYSCTL = re.compile(r"(net|kernel)(\.[A-Za-z0-9_-]+)+")
NODE_NAME_MAX = 20
DEVICE_KINDS = ("bridge",)


@dataclass
class Endpoint:
    """One end of a veth link: the node, its interface name there, and the addresses on it; with `master`,
    the end is a port of that bridge of the node instead (and carries no addresses: the bridge does)."""

    node: str
    ifname: str
    addresses: list[str] = field(default_factory=list)
    master: str | None = None


@dataclass
class Device:
    """A device made inside a node that is not a veth end: kind "bridge", a Linux bridge (as docker0) with
    the node's addresses on that network; link ends name it as their `master` to become its ports."""

    node: str
    name: str
    kind: str = "bridge"
    addresses: list[str] = field(default_factory=list)
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or f"device {self.name!r} in {self.node!r}"


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
    devices: list[Device] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    source: str = "<code>"
    description: str = ""
    roles: Roles | None = None
    steerings: list[Steering] = field(default_factory=list)

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

    def link(  # noqa: PLR0913 - keyword options of one veth link
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
        a_master: str | None = None,
        b_master: str | None = None,
    ) -> "Topology":
        """Connect nodes `a` and `b` with a veth pair; interfaces default to 'to-<peer>'. `a_master` makes
        a's end a port of that bridge of node a (likewise `b_master`)."""
        self.links.append(
            Link(
                Endpoint(a, a_ifname or f"to-{b}"[:IFNAMSIZ], list(a_addresses or []), a_master),
                Endpoint(b, b_ifname or f"to-{a}"[:IFNAMSIZ], list(b_addresses or []), b_master),
                mtu,
                label,
            )
        )
        return self

    def device(
        self,
        node: str,
        name: str,
        *,
        kind: str = "bridge",
        addresses: list[str] | None = None,
        label: str = "",
    ) -> "Topology":
        """Add a device (a bridge) named `name` inside `node`, with these addresses."""
        self.devices.append(Device(node, name, kind, list(addresses or []), label))
        return self

    def route(self, node: str, destination: str, via: str, *, label: str = "") -> "Topology":
        """Add a route in `node`."""
        self.routes.append(Route(node, destination, via, label))
        return self

    def tproxy(self, steering: Steering) -> "Topology":
        """Add a tproxy steering (netlab.topology.steering) to install in its node once the links are up."""
        self.steerings.append(steering)
        return self

    def addresses_of(self, node: str) -> list[str]:
        """Every address (without prefix) configured on `node`, in topology order (links, then devices)."""
        return [
            str(ipaddress.ip_interface(text).ip)
            for end in self._ends_and_devices()
            if end.node == node
            for text in end.addresses
        ]

    def roles_or_defaults(self) -> Roles:
        """The `[roles]` table, or the defaults: the nodes named `host` and `backend` play those parts (when
        they exist) and every other node is a client."""
        if self.roles is not None:
            return self.roles
        return Roles(
            host="host" if "host" in self.nodes else None,
            backend="backend" if "backend" in self.nodes else None,
            clients=[name for name in self.nodes if name not in ("host", "backend")],
        )

    def interfaces_of(self, node: str) -> list[str]:
        """The names of `node`'s veth interfaces and devices, in topology order."""
        return [
            end.ifname if isinstance(end, Endpoint) else end.name
            for end in self._ends_and_devices()
            if end.node == node
        ]

    def addresses_on(self, end: Endpoint) -> list[str]:
        """The addresses (with prefix) a link end has on its network: its own, or its bridge's."""
        for device in self.devices:
            if end.master is not None and (device.node, device.name) == (end.node, end.master):
                return list(device.addresses)
        return list(end.addresses)

    def _ends_and_devices(self) -> list["Endpoint | Device"]:
        return [*(end for link in self.links for end in (link.a, link.b)), *self.devices]

    def _require_node(self, node: str, element: str) -> None:
        if node not in self.nodes:
            raise TopologyError(  # a mistake in the file (78), not a lab without that node (68)
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
        self._validate_devices(seen_addresses, seen_ifnames)
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
                self._validate_master(link, end)
                self._validate_addresses(
                    link.label, end.addresses, f"{end.node}/{end.ifname}", seen_addresses
                )
            if link.mtu is not None and (
                isinstance(link.mtu, bool) or not isinstance(link.mtu, int) or not 68 <= link.mtu <= 65535
            ):
                raise self._fail(link.label, f"mtu {link.mtu!r} must be an integer from 68 to 65535")
        self._validate_roles()
        self._validate_steerings()
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

    def _validate_addresses(
        self, element: str, addresses: list[str], where: str, seen_addresses: dict[str, str]
    ) -> None:
        for text in addresses:
            interface = parse_interface(text, f"{self.source}: {element}")
            require_lab_address(interface.ip, f"{self.source}: {element}", text)
            address = str(interface.ip)
            if address in seen_addresses:
                raise self._fail(element, f"address {text!r} is already used on {seen_addresses[address]}")
            seen_addresses[address] = where

    def _validate_devices(self, seen_addresses: dict[str, str], seen_ifnames: set[tuple[str, str]]) -> None:
        for device in self.devices:
            self._require_node(device.node, device.label)
            if device.kind not in DEVICE_KINDS:
                raise self._fail(device.label, f"kind {device.kind!r}: expected one of {list(DEVICE_KINDS)}")
            if not device.name or len(device.name) > IFNAMSIZ or not _IFNAME.fullmatch(device.name):
                raise self._fail(
                    device.label,
                    f"device name {device.name!r} must be 1 to {IFNAMSIZ} characters "
                    "of letters, digits, '_', '.' and '-'",
                )
            if (device.node, device.name) in seen_ifnames:
                raise self._fail(device.label, f"node {device.node!r} already has a device {device.name!r}")
            seen_ifnames.add((device.node, device.name))
            self._validate_addresses(
                device.label, device.addresses, f"{device.node}/{device.name}", seen_addresses
            )

    def _validate_master(self, link: Link, end: Endpoint) -> None:
        if end.master is None:
            return
        bridges = sorted(d.name for d in self.devices if d.node == end.node and d.kind == "bridge")
        if end.master not in bridges:
            raise self._fail(
                link.label,
                f"master {end.master!r} is not a bridge of node {end.node!r} (its bridges: {bridges})",
            )
        if end.addresses:
            raise self._fail(
                link.label,
                f"{end.node}/{end.ifname} is a port of bridge {end.master!r}: a port carries no addresses, "
                f"put {end.addresses!r} on the bridge",
            )

    def _validate_steerings(self) -> None:
        for steering in self.steerings:
            label = steering.label or f"tproxy in {steering.node!r}"
            self._require_node(steering.node, label)
            interfaces = self.interfaces_of(steering.node)
            if steering.iifname is not None and steering.iifname not in interfaces:
                raise self._fail(
                    label,
                    f"iifname {steering.iifname!r} is not an interface of node {steering.node!r} "
                    f"(its interfaces: {interfaces})",
                )

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
