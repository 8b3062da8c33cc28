"""Topologies the project uses again and again, written once in code."""

from netlab.topology import Topology


def seed_deployment() -> Topology:
    """The seed README's deployment, IPv4: clients -- host running the forwarder -- container backend.

        client 198.51.100.10 --- 198.51.100.1 [host] 192.0.2.1 --- 192.0.2.2 backend

    Clients may spoof any 203.0.113.0/24 source; the host routes that prefix back via the client link,
    and the backend's default route points at the host, as a container's would.
    """
    return (
        Topology()
        .node("client")
        .node("host")
        .node("backend")
        .sysctl("host", "net.ipv4.ip_forward", "1")
        .link("client", "host", a_addresses=["198.51.100.10/24"], b_addresses=["198.51.100.1/24"])
        .link("host", "backend", a_addresses=["192.0.2.1/24"], b_addresses=["192.0.2.2/24"])
        .route("client", "default", via="198.51.100.1")
        .route("host", "203.0.113.0/24", via="198.51.100.10")
        .route("backend", "default", via="192.0.2.1")
    )
