"""The forwarder gives up every capability once its sockets exist when nothing after start-up needs one
(direct mode on the raw send path, --send-proxy-protocol), and still forwards new clients afterwards; where
a new flow's socket needs IP_TRANSPARENT (the per-client sockets path) it keeps them.

    client node: 198.51.100.10 and crafted sources 203.0.113.0/24
    host 198.51.100.1 (forwarder, started as root) 192.0.2.1 --- 192.0.2.2 backend
    (fixtures/topologies/seed.toml)
"""

import os
import signal
import socket

import pytest

from forwarder.core.proxy_protocol import build
from forwarder.io.capabilities import CapabilitySets, of_process
from netlab import ForwarderUnderTest, Lab, start_forwarder
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged

LISTEN = "198.51.100.1:27000"
TARGET = ("198.51.100.1", 27000)
DROPPED_LINE = "dropped every capability"


def backend_socket(lab: Lab) -> socket.socket:
    sock = lab["backend"].udp_socket("192.0.2.2", 27000)
    sock.settimeout(10)
    return sock


def capabilities_of(forwarder: ForwarderUnderTest) -> CapabilitySets:
    # systemd-socket-activate execs the forwarder: the activator's pid is the forwarder's.
    return of_process(forwarder.process.pid)


def no_capability_left(forwarder: ForwarderUnderTest) -> bool:
    sets = capabilities_of(forwarder)
    return (sets.effective, sets.permitted, sets.inheritable, sets.ambient) == (0, 0, 0, 0)


def test_on_the_raw_path_no_capability_is_left_while_it_forwards_new_and_local_clients(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab)
    forwarder = start_forwarder(lab["host"], [LISTEN], ["192.0.2.2:27000"], args=["--log-level", "debug"])
    lab["client"].send_udp(src="203.0.113.7", dst=TARGET[0], sport=4242, dport=TARGET[1], payload=b"first")
    assert backend.recvfrom(65535) == (b"first", ("203.0.113.7", 4242))
    forwarder.wait_ready()

    assert no_capability_left(forwarder)
    # The first datagram of a client never seen before the drop still leaves with the client's address.
    lab["client"].send_udp(src="203.0.113.8", dst=TARGET[0], sport=5353, dport=TARGET[1], payload=b"second")
    assert backend.recvfrom(65535) == (b"second", ("203.0.113.8", 5353))
    # A client on the host itself goes out from a one-shot socket bound to its (local) address: that needs
    # no IP_TRANSPARENT. The client's socket is closed before the forwarder reads (it is stopped meanwhile),
    # so the port is free to bind, as for a program that sent and went away.
    os.kill(forwarder.process.pid, signal.SIGSTOP)
    try:
        with lab["host"].open_socket(socket.AF_INET) as local:
            local.bind(("198.51.100.1", 0))
            local.sendto(b"local", TARGET)
            local_client = local.getsockname()
    finally:
        os.kill(forwarder.process.pid, signal.SIGCONT)
    assert backend.recvfrom(65535) == (b"local", local_client)
    assert no_capability_left(forwarder)
    assert forwarder.stop() == 0
    assert DROPPED_LINE in forwarder.process.output()


def test_with_send_proxy_protocol_no_capability_is_left_while_it_forwards_new_clients(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab)
    forwarder = start_forwarder(
        lab["host"], [LISTEN], ["192.0.2.2:27000"], args=["--send-proxy-protocol", "--log-level", "debug"]
    )
    first = lab["client"].udp_socket("198.51.100.10", 4242)
    first.settimeout(10)
    first.sendto(b"first", TARGET)
    assert backend.recvfrom(65535)[0] == build(("198.51.100.10", 4242), TARGET) + b"first"
    forwarder.wait_ready()

    assert no_capability_left(forwarder)
    # A client first seen after the drop opens a new flow, and its reply is relayed.
    second = lab["client"].udp_socket("198.51.100.10", 5353)
    second.settimeout(10)
    second.sendto(b"second", TARGET)
    data, sender = backend.recvfrom(65535)
    assert data == build(("198.51.100.10", 5353), TARGET) + b"second"
    backend.sendto(b"answer", sender)
    assert second.recvfrom(65535) == (b"answer", TARGET)
    assert forwarder.stop() == 0
    assert DROPPED_LINE in forwarder.process.output()


def test_on_the_per_client_sockets_path_it_keeps_the_capability_new_flows_bind_with(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab)
    forwarder = start_forwarder(
        lab["host"], [LISTEN], ["192.0.2.2:27000"], args=["--send-path", "sockets", "--log-level", "debug"]
    )
    lab["client"].send_udp(src="203.0.113.7", dst=TARGET[0], sport=4242, dport=TARGET[1], payload=b"first")
    assert backend.recvfrom(65535) == (b"first", ("203.0.113.7", 4242))
    forwarder.wait_ready()

    assert capabilities_of(forwarder).effective != 0
    lab["client"].send_udp(src="203.0.113.8", dst=TARGET[0], sport=5353, dport=TARGET[1], payload=b"second")
    assert backend.recvfrom(65535) == (b"second", ("203.0.113.8", 5353))
    assert forwarder.stop() == 0
    assert DROPPED_LINE not in forwarder.process.output()
