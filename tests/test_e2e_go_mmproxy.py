"""Interop with a real PROXY protocol peer, Debian's go-mmproxy, in both directions.

    client 198.51.100.10 --- 198.51.100.1 [host: forwarder] 192.0.2.1 --- 192.0.2.2 [backend]
                                                                         go-mmproxy on 192.0.2.2:27000
                                                                         -> the application 127.0.0.1:27001

1. client -> our forwarder (--send-proxy-protocol, no capability) -> go-mmproxy -> the application, which
   sees the real client's address and port; its answer comes back the same way.
2. go-mmproxy's input (a datagram with a PROXY v2 header from a load balancer, here the client node) sent
   to go-mmproxy and to our --proxy-protocol-from: both applications see the same client and payload.
"""

import shutil
import socket
from typing import Any

import pytest
from e2e_helpers import serve_in_thread

from forwarder.core.proxy_protocol import build
from netlab import Lab, start_forwarder
from netlab.lab.node import LabNode
from netlab.lab.wait import wait_until
from netlab.service.procnet import udp_ports_bound
from netlab.service.relay import install_relay_route
from netlab.topology.shipped import seed_deployment

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.skipif(shutil.which("go-mmproxy") is None, reason="go-mmproxy is not installed (./dev)"),
]

GO_MMPROXY = ("192.0.2.2", 27000)
APPLICATION = ("127.0.0.1", 27001)
NO_CAPABILITY = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


def start_go_mmproxy(backend: LabNode) -> None:
    """go-mmproxy on the backend host, in front of an application on its loopback, with the routing its
    README gives for the application's answers (from 127.0.0.0/8 via lo to a local table)."""
    install_relay_route(backend, "127.0.0.1", table=123)
    process = backend.run(
        ["go-mmproxy", "-p", "udp", "-l", "192.0.2.2:27000", "-4", "127.0.0.1:27001",
         "-6", "[::1]:27001", "-v", "2"],
        label="go-mmproxy",
    )  # fmt: skip

    def listening() -> bool:
        return GO_MMPROXY[1] in udp_ports_bound(process.pid)

    wait_until(listening, "go-mmproxy to listen", 10)


def answering_application(backend: LabNode, seen: list[tuple[bytes, tuple[str, int]]]) -> socket.socket:
    """The application behind go-mmproxy: records what it sees, answers `seen=ADDR:PORT;DATA`."""
    sock = backend.udp_socket(*APPLICATION)

    def answer(data: bytes, peer: Any) -> bytes:
        seen.append((data, peer))
        return f"seen={peer[0]}:{peer[1]};".encode() + data

    serve_in_thread(backend.lab, sock, answer)
    return sock


def test_our_header_through_go_mmproxy_shows_the_application_the_real_client(lab: Lab) -> None:
    lab.build(seed_deployment())
    seen: list[tuple[bytes, tuple[str, int]]] = []
    answering_application(lab["backend"], seen)
    start_go_mmproxy(lab["backend"])
    start_forwarder(
        lab["host"],
        ["198.51.100.1:27000"],
        ["192.0.2.2:27000"],
        args=["--send-proxy-protocol"],
        command_prefix=NO_CAPABILITY,
    )
    client = lab["client"].udp_socket("198.51.100.10", 4242)
    client.settimeout(10)
    client.connect(("198.51.100.1", 27000))

    client.send(b"hello")
    assert client.recv(65535) == b"seen=198.51.100.10:4242;hello"
    assert seen == [(b"hello", ("198.51.100.10", 4242))]


def test_go_mmproxys_input_gives_our_backend_the_view_go_mmproxy_gives(lab: Lab) -> None:
    lab.build(seed_deployment())
    seen: list[tuple[bytes, tuple[str, int]]] = []
    answering_application(lab["backend"], seen)
    start_go_mmproxy(lab["backend"])
    ours = lab["backend"].udp_socket("192.0.2.2", 27002)
    ours.settimeout(10)
    start_forwarder(
        lab["host"],
        ["198.51.100.1:27000"],
        ["192.0.2.2:27002"],
        args=["--proxy-protocol-from", "198.51.100.10"],
    )
    lb = lab["client"].udp_socket("198.51.100.10", 0)

    for client, payload in ((("203.0.113.7", 4242), b"first"), (("203.0.113.8", 5000), b"second")):
        lb.sendto(build(client, GO_MMPROXY) + payload, GO_MMPROXY)
        lb.sendto(build(client, ("198.51.100.1", 27000)) + payload, ("198.51.100.1", 27000))
        assert ours.recvfrom(65535) == (payload, client)

    wait_until(lambda: len(seen) == 2, "go-mmproxy's application to see both datagrams", 10)
    assert seen == [(b"first", ("203.0.113.7", 4242)), (b"second", ("203.0.113.8", 5000))]
