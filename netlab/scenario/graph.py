"""A scenario drawn (`netlab graph SCENARIO`): its topology, plus a dashed arrow for its traffic (from the
sending node to the node that owns the address it is sent to) and one for each of the forwarder's
destinations (from the forwarder's node to the backend's)."""

import ipaddress

from netlab.addresses import format_endpoint, parse_endpoint
from netlab.errors import AddressError
from netlab.scenario.model import Scenario
from netlab.topology.graph import Flow
from netlab.topology.model import Topology

SHOWN = 3  # traffic lines per arrow; more are counted


def _owner(topology: Topology, address: str) -> str | None:
    """The node with `address` on one of its interfaces (None: nobody, e.g. a wildcard or a host name)."""
    wanted = ipaddress.ip_address(address)
    for node in topology.nodes:
        if any(ipaddress.ip_address(own) == wanted for own in topology.addresses_of(node)):
            return node
    return None


def scenario_flows(scenario: Scenario) -> list[Flow]:
    """The scenario's traffic and forwarding as flows between nodes, in the order the file gives them."""
    topology = scenario.topology
    traffic: dict[tuple[str, str], list[str]] = {}
    for item in scenario.traffic:
        target = _owner(topology, item.dst)
        if target is None:
            continue
        source = format_endpoint(item.src, item.sport) if item.src else f"{item.node}:{item.sport}"
        times = f"{item.count} x " if item.count != 1 else ""
        text = f"{times}{len(item.payload)} B {source} -> {format_endpoint(item.dst, item.dport)}"
        traffic.setdefault((item.node, target), []).append(text)
    flows = []
    for (source, target), texts in traffic.items():
        shown = texts[:SHOWN] + ([f"... and {len(texts) - SHOWN} more"] if len(texts) > SHOWN else [])
        flows.append(Flow(source, target, "\n".join(shown), "traffic"))
    forwarder = scenario.forwarder
    if forwarder is not None:
        forwarded: dict[str, list[str]] = {}
        for destination in forwarder.destinations:
            try:
                address, port = parse_endpoint(destination.rpartition("=")[2])
            except AddressError:
                continue  # a host name: the forwarder resolves it
            target = _owner(topology, address)
            if target is not None and target != forwarder.node:
                forwarded.setdefault(target, []).append(format_endpoint(address, port))
        for target, endpoints in forwarded.items():
            flows.append(Flow(forwarder.node, target, "forwards to " + ", ".join(endpoints), "forwarded"))
    return flows


__all__ = ["scenario_flows"]
