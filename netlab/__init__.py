"""netlab: a test-first network lab for the transparent UDP forwarder.

Builds network namespaces and veth links with pyroute2, starts the forwarder under
systemd-socket-activate, and sends spoofed-source datagrams crafted with scapy.
"""

from netlab.activation import ForwarderUnderTest, start_forwarder
from netlab.errors import (
    LabTimeoutError,
    MissingPrivilegeError,
    NetlabError,
    ProcessFailedError,
    TopologyError,
)
from netlab.lab import Lab, LabNode, lab
from netlab.notify import NotifyEvent, NotifyReceiver
from netlab.process import Process
from netlab.topology import Topology

__all__ = [
    "ForwarderUnderTest",
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
    "lab",
    "start_forwarder",
]
