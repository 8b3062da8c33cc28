"""netlab: a test-first network lab for the transparent UDP forwarder.

Builds network namespaces and veth links with pyroute2 (from Python or TOML topology files), starts the
forwarder under systemd-socket-activate, sends spoofed-source datagrams crafted with scapy, checks what
arrives with an expectation API, records a pcap per interface, and impairs links with nftables.

The names below are imported on first use (PEP 562), so `import netlab` and the programs that run inside
a node (`python -m netlab.programs.echo`) stay standard-library only; `from netlab import Lab` imports
pyroute2 at that moment. The subpackages are the architecture: lab, topology, traffic, service, scenario,
doctor, bench, programs, cli.
"""

import importlib
from typing import TYPE_CHECKING, Any

from netlab.errors import (
    AddressError,
    CommandNotFoundError,
    ExpectationError,
    FixtureNotFoundError,
    ImpairmentUnavailableError,
    LabTimeoutError,
    MissingPrivilegeError,
    NetlabError,
    PacketError,
    ProcessFailedError,
    ScenarioError,
    SystemCallError,
    TopologyError,
    UnknownLabError,
    UnknownNodeError,
    UsageError,
)

if TYPE_CHECKING:
    from netlab.fixtures import load_topology, topology_path
    from netlab.lab.lab import Lab
    from netlab.lab.node import LabNode
    from netlab.lab.process import Process
    from netlab.programs.crafted import Crafted
    from netlab.service.activation import (
        ForwarderUnderTest,
        HeldSockets,
        hold_listen_sockets,
        start_forwarder,
    )
    from netlab.service.notify import NotifyEvent, NotifyReceiver
    from netlab.service.replypath import enable_reply_path
    from netlab.topology.file import load_topology_file, topology_from_dict
    from netlab.topology.model import Topology
    from netlab.traffic.expect import ANY, Inbox, expect
    from netlab.traffic.impair import add_delay, add_loss, link_loss

# Public name -> the module that defines it.
_LAZY = {
    "ANY": "netlab.traffic.expect",
    "Crafted": "netlab.programs.crafted",
    "ForwarderUnderTest": "netlab.service.activation",
    "HeldSockets": "netlab.service.activation",
    "Inbox": "netlab.traffic.expect",
    "Lab": "netlab.lab.lab",
    "LabNode": "netlab.lab.node",
    "NotifyEvent": "netlab.service.notify",
    "NotifyReceiver": "netlab.service.notify",
    "Process": "netlab.lab.process",
    "Topology": "netlab.topology.model",
    "add_delay": "netlab.traffic.impair",
    "add_loss": "netlab.traffic.impair",
    "enable_reply_path": "netlab.service.replypath",
    "expect": "netlab.traffic.expect",
    "hold_listen_sockets": "netlab.service.activation",
    "link_loss": "netlab.traffic.impair",
    "load_topology": "netlab.fixtures",
    "load_topology_file": "netlab.topology.file",
    "start_forwarder": "netlab.service.activation",
    "topology_from_dict": "netlab.topology.file",
    "topology_path": "netlab.fixtures",
}

__all__ = [
    "ANY",
    "AddressError",
    "CommandNotFoundError",
    "Crafted",
    "ExpectationError",
    "FixtureNotFoundError",
    "ForwarderUnderTest",
    "HeldSockets",
    "ImpairmentUnavailableError",
    "Inbox",
    "Lab",
    "LabNode",
    "LabTimeoutError",
    "MissingPrivilegeError",
    "NetlabError",
    "NotifyEvent",
    "NotifyReceiver",
    "PacketError",
    "Process",
    "ProcessFailedError",
    "ScenarioError",
    "SystemCallError",
    "Topology",
    "TopologyError",
    "UnknownLabError",
    "UnknownNodeError",
    "UsageError",
    "add_delay",
    "add_loss",
    "enable_reply_path",
    "expect",
    "hold_listen_sockets",
    "link_loss",
    "load_topology",
    "load_topology_file",
    "start_forwarder",
    "topology_from_dict",
    "topology_path",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines a public name the first time it is asked for (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'netlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
