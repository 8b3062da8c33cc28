"""A Docker-like network in a lab: a Linux bridge in the host node with "containers" on it, each joined by
a veth pair (eth0 in the container, a port of the bridge in the host), as Docker and Podman set it up. In
topology files it is a link of kind "bridge":

    [[links]]
    kind = "bridge"
    bridge = { node = "host", ifname = "docker0", addresses = ["192.0.2.1/24"] }
    ports = [
        { node = "web", addresses = ["192.0.2.2/24"] },               # ifname "eth0" in the container
        { node = "db", ifname = "eth0", addresses = ["192.0.2.3/24"] },
    ]

`masquerade_ruleset` is the host's own NAT for the containers' outbound traffic, the rule Docker adds.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyroute2 import IPRoute

from netlab.names import IFNAMSIZ

if TYPE_CHECKING:
    from netlab.lab import Lab

_IFNAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass
class BridgePort:
    """A container on the bridge: its interface (and addresses) inside, and its port's name in the host."""

    node: str
    ifname: str = "eth0"
    addresses: list[str] = field(default_factory=list)
    host_ifname: str = ""

    def __post_init__(self) -> None:
        self.host_ifname = self.host_ifname or f"veth-{self.node}"[:IFNAMSIZ]


@dataclass
class Bridge:
    """A bridge named `ifname` in node `node` (with the host's addresses on it) and its container ports."""

    node: str
    ifname: str
    addresses: list[str] = field(default_factory=list)
    ports: list[BridgePort] = field(default_factory=list)
    mtu: int | None = None
    label: str = ""

    def __post_init__(self) -> None:
        self.label = self.label or f"bridge {self.ifname!r} in {self.node!r}"

    def ends(self) -> Iterator[tuple[str, str, list[str]]]:
        """(node, interface, addresses) of the bridge itself and of every container's interface."""
        yield self.node, self.ifname, self.addresses
        for port in self.ports:
            yield port.node, port.ifname, port.addresses

    def validate(
        self, require_node: Callable[[str, str], None], fail: Callable[[str, str], Exception]
    ) -> None:
        """Check names (the addresses are checked with the topology's other addresses)."""
        require_node(self.node, self.label)
        if not self.ports:
            raise fail(
                self.label, "a bridge needs at least one port: ports = [{ node = ..., addresses = [...] }]"
            )
        names = [self.ifname]
        for port in self.ports:
            require_node(port.node, self.label)
            if port.node == self.node:
                raise fail(self.label, f"port {port.node!r} is the bridge's own node: expected a container")
            names += [port.ifname, port.host_ifname]
        for name in names:
            if not name or len(name) > IFNAMSIZ or not _IFNAME.fullmatch(name):
                raise fail(
                    self.label,
                    f"interface name {name!r} must be 1 to {IFNAMSIZ} characters of letters, digits, '_', "
                    "'.' and '-'",
                )
        host_side = [self.ifname] + [port.host_ifname for port in self.ports]
        if len(set(host_side)) != len(host_side):
            raise fail(self.label, f"interface names in {self.node!r} repeat: {host_side!r}")


def build_bridge(lab: "Lab", bridge: Bridge) -> None:
    """Create the bridge in its node, each container's veth pair with its host end enslaved to the bridge,
    and bring everything up (addresses as for links; the lab removes it all with the namespaces)."""
    host = lab[bridge.node]
    with IPRoute(netns=host.namespace) as ipr:
        settings: dict[str, object] = {"ifname": bridge.ifname, "kind": "bridge"}
        if bridge.mtu is not None:
            settings["mtu"] = bridge.mtu
        ipr.link("add", **settings)
    for port in bridge.ports:
        lab.build_veth(port.node, port.ifname, bridge.node, port.host_ifname)
        with IPRoute(netns=host.namespace) as ipr:
            master = ipr.link_lookup(ifname=bridge.ifname)[0]
            index = ipr.link_lookup(ifname=port.host_ifname)[0]
            extra: dict[str, object] = {"mtu": bridge.mtu} if bridge.mtu is not None else {}
            ipr.link("set", index=index, master=master, state="up", **extra)
        lab.configure_interface(port.node, port.ifname, port.addresses, bridge.mtu)
    lab.configure_interface(bridge.node, bridge.ifname, bridge.addresses, bridge.mtu)


def masquerade_ruleset(network: str, bridge: str) -> str:
    """The host's NAT for its containers' outbound traffic, as Docker adds it (`-s NET ! -o BRIDGE -j
    MASQUERADE`): stateful, so it sees only the first packet of each flow."""
    family = "ip6" if ":" in network else "ip"
    return (
        f"table {family} netlab_masquerade {{\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        f'        {family} saddr {network} oifname != "{bridge}" masquerade\n'
        "    }\n"
        "}\n"
    )


__all__ = ["Bridge", "BridgePort", "build_bridge", "masquerade_ruleset"]
