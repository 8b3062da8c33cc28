"""netlab: a test-first network lab for the transparent UDP forwarder.

Builds network namespaces and veth links with pyroute2 (from Python or TOML topology files), starts the
forwarder under systemd-socket-activate, sends spoofed-source datagrams crafted with scapy, checks what
arrives with an expectation API, records a pcap per interface, and impairs links with nftables.
"""

from netlab.activation import ForwarderUnderTest, HeldSockets, hold_listen_sockets, start_forwarder
from netlab.crafted import Crafted
from netlab.errors import (
    ExpectationError,
    FixtureNotFoundError,
    ImpairmentUnavailableError,
    LabTimeoutError,
    MissingPrivilegeError,
    NetlabError,
    ProcessFailedError,
    TopologyError,
)
from netlab.expect import ANY, Inbox, expect
from netlab.fixtures import load_topology, topology_path
from netlab.impair import add_delay, add_loss, link_loss
from netlab.lab import Lab, LabNode, lab
from netlab.notify import NotifyEvent, NotifyReceiver
from netlab.process import Process
from netlab.replypath import enable_reply_path
from netlab.topology import Topology
from netlab.topology_file import load_topology_file, topology_from_dict

__all__ = [
    "ANY",
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
    "Process",
    "ProcessFailedError",
    "Topology",
    "TopologyError",
    "add_delay",
    "add_loss",
    "enable_reply_path",
    "expect",
    "hold_listen_sockets",
    "lab",
    "link_loss",
    "load_topology",
    "load_topology_file",
    "start_forwarder",
    "topology_from_dict",
    "topology_path",
]
