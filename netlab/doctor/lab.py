"""`netlab doctor --lab`: the doctor's Deployment derived from a lab's topology and its `[roles]`.

Without a `[roles]` table the nodes named `host` and `backend` play those parts and every other node is
a client. Per address family the backend has on its link with the host, one Deployment: the backend's and
the host's address on that link, the host's address clients send to (on a link shared with a client), and
the client addresses (the client nodes' own, plus one from each spoofed network).
"""

import ipaddress

from netlab.doctor.checks import Deployment, Finding, diagnose
from netlab.doctor.probes import NamespaceProbe
from netlab.errors import TopologyError
from netlab.lab.lab import Lab
from netlab.topology.model import Roles, Topology


def roles_of(topology: Topology) -> Roles:
    """The topology's roles, or the defaults by node name; raises when no host or backend is known."""
    roles = topology.roles_or_defaults()
    for role in ("host", "backend"):
        if getattr(roles, role) is None:
            raise TopologyError(
                f'{topology.source}: no {role} node: add [roles] {role} = "NODE" '
                f"(nodes: {sorted(topology.nodes)})"
            )
    return roles


def _shared(topology: Topology, a: str, b: str) -> list[tuple[str, str]]:
    """(address on a, address on b) of every link between nodes a and b, prefixes included (a bridge
    port's address is its bridge's)."""
    pairs: list[tuple[str, str]] = []
    for link in topology.links:
        for here, there in ((link.a, link.b), (link.b, link.a)):
            if here.node == a and there.node == b:
                pairs.extend(
                    (x, y) for x in topology.addresses_on(here) for y in topology.addresses_on(there)
                )
    return [
        (x, y) for x, y in pairs if ipaddress.ip_interface(x).network == ipaddress.ip_interface(y).network
    ]


def deployments_of(lab: Lab, topology: Topology) -> list[Deployment]:
    """One Deployment per address family of the host--backend link."""
    roles = roles_of(topology)
    host, backend = str(roles.host), str(roles.backend)
    deployments = []
    for host_side, backend_side in _shared(topology, host, backend):
        version = ipaddress.ip_interface(backend_side).version
        client_facing = [
            str(ipaddress.ip_interface(h).ip)
            for client in roles.clients
            for h, _ in _shared(topology, host, client)
            if ipaddress.ip_interface(h).version == version
        ]
        clients = [
            address
            for client in roles.clients
            for address in topology.addresses_of(client)
            if ipaddress.ip_address(address).version == version
        ]
        for text in roles.spoofed:
            network = ipaddress.ip_network(text)
            if network.version == version:
                clients.append(str(network.network_address + min(7, network.num_addresses - 1)))
        deployments.append(
            Deployment(
                host=NamespaceProbe(host, lab[host].namespace),
                backend=NamespaceProbe(backend, lab[backend].namespace),
                backend_address=str(ipaddress.ip_interface(backend_side).ip),
                host_address=client_facing[0] if client_facing else str(ipaddress.ip_interface(host_side).ip),
                clients=clients,
                host_backend_address=str(ipaddress.ip_interface(host_side).ip),
            )
        )
    if not deployments:
        raise TopologyError(f"{topology.source}: host {host!r} and backend {backend!r} share no link")
    return deployments


def diagnose_lab(lab: Lab, topology: Topology, reply_mode: str | None = None) -> list[Finding]:
    """Every finding of every family's Deployment, each reported once; `reply_mode` overrides the one the
    running forwarder's command line gives."""
    findings: list[Finding] = []
    for deployment in deployments_of(lab, topology):
        deployment.reply_mode = reply_mode
        for finding in diagnose(deployment):
            if finding not in findings:
                findings.append(finding)
    return findings


__all__ = ["deployments_of", "diagnose_lab", "roles_of"]
