"""The topologies the project uses again and again. Each is a file in fixtures/topologies (one source of
truth, with its drawing and address plan); these functions name them for Python callers.
"""

from netlab.fixtures import load_topology
from netlab.topology.model import Topology


def seed_deployment() -> Topology:
    """The seed README's deployment, IPv4 (fixtures/topologies/seed.toml).

        client 198.51.100.10 --- 198.51.100.1 [host] 192.0.2.1 --- 192.0.2.2 backend

    Clients may spoof any 203.0.113.0/24 source; the host routes that prefix back via the client link,
    and the backend's default route points at the host, as a container's would.
    """
    return load_topology("seed")


def seed_deployment_ipv6() -> Topology:
    """The IPv6 twin (fixtures/topologies/seed-ipv6.toml): 2001:db8:51::/64 and 2001:db8:2::/64 links,
    spoofed clients from 2001:db8:113::/64."""
    return load_topology("seed-ipv6")


def dual_stack() -> Topology:
    """Both families on every link (fixtures/topologies/dual-stack.toml)."""
    return load_topology("dual-stack")
