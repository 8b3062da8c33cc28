"""Building a lab's links with pyroute2: veth pairs made inside one node with the peer placed straight into
the other, bridges with their ports, addresses, MTU and routes, and waiting until the links are usable
(carrier and IPv6 ready)."""

import ipaddress
import os
import socket

from pyroute2 import IPRoute

from netlab.lab import netns
from netlab.lab.wait import wait_until
from netlab.topology.model import parse_interface

IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40


def wait_links_usable(
    namespace: str, node: str, ifnames: list[str], has_addresses: bool, timeout: float = 10.0
) -> None:
    """Return once every interface of `ifnames` is operationally up with a usable IPv6 link-local address."""
    # A veth's carrier comes up through the kernel's link-watch work (up to a second later), and only
    # then does IPv6 configure the link (multicast route, link-local address): a datagram sent before is
    # dropped (Ip6InNoRoutes). Wait until every interface is operationally up with a usable fe80 address.
    if not ifnames:
        return
    with IPRoute(netns=namespace) as ipr:

        def usable() -> bool:
            links = {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}
            indexes = []
            for ifname in ifnames:
                link = links.get(ifname)
                if link is None or link.get_attr("IFLA_OPERSTATE") != "UP":
                    return False
                indexes.append(link["index"])
            if not has_addresses or netns.read_sysctl(namespace, "net.ipv6.conf.all.disable_ipv6") == "1":
                return True
            link_local = {
                address["index"]
                for address in ipr.get_addr(family=socket.AF_INET6)
                if str(address.get_attr("IFA_ADDRESS")).startswith("fe80:")
                and not (address.get_attr("IFA_FLAGS") or address["flags"]) & IFA_F_TENTATIVE
            }
            return all(index in link_local for index in indexes)

        wait_until(usable, f"the links {ifnames} of {node!r} to be up", timeout)


def build_link(a_namespace: str, a_ifname: str, b_namespace: str, b_ifname: str) -> None:
    """Create the veth pair a_ifname (in a_namespace) -- b_ifname (in b_namespace)."""
    # The pair is created inside node a with its peer placed straight into node b, so no interface
    # ever appears in the root namespace.
    peer_fd = os.open(netns.netns_path(b_namespace), os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute(netns=a_namespace) as ipr:
            ipr.link("add", ifname=a_ifname, kind="veth", peer={"ifname": b_ifname, "net_ns_fd": peer_fd})
    finally:
        os.close(peer_fd)


def build_device(namespace: str, name: str, kind: str) -> None:
    """Create device `name` of `kind` ("bridge") in `namespace`; configure_interface brings it up."""
    # A new bridge has STP off, so a port forwards as soon as it is up (no 15 s listening/learning).
    with IPRoute(netns=namespace) as ipr:
        ipr.link("add", ifname=name, kind=kind)


def attach_port(namespace: str, ifname: str, bridge: str) -> None:
    """Make interface `ifname` a port of bridge `bridge` (both in `namespace`)."""
    with IPRoute(netns=namespace) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], master=ipr.link_lookup(ifname=bridge)[0])


def configure_interface(
    namespace: str, node: str, ifname: str, addresses: list[str], mtu: int | None
) -> None:
    """Give an interface its addresses (IPv6 without duplicate address detection) and MTU, and bring it up."""
    with IPRoute(netns=namespace) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        for text in addresses:
            interface = parse_interface(text, f"{node}/{ifname}")
            extra = {"flags": IFA_F_NODAD} if interface.version == 6 else {}
            ipr.addr(
                "add",
                index=index,
                address=str(interface.ip),
                prefixlen=interface.network.prefixlen,
                **extra,
            )
        settings: dict[str, object] = {"state": "up"}
        if mtu is not None:
            settings["mtu"] = mtu
        ipr.link("set", index=index, **settings)


def add_route(namespace: str, destination: str, via: str) -> None:
    """Add a route to `destination` (a CIDR or `default`) via the gateway `via`."""
    gateway = ipaddress.ip_address(via)
    if destination.startswith("default"):
        destination = "0.0.0.0/0" if gateway.version == 4 else "::/0"
    network = ipaddress.ip_network(destination)
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    with IPRoute(netns=namespace) as ipr:
        ipr.route(
            "add",
            dst=str(network.network_address),
            dst_len=network.prefixlen,
            gateway=str(gateway),
            family=family,
        )
