"""PROXY protocol v2 end to end under systemd-socket-activate: a load balancer's header names the client the
backend sees (--proxy-protocol-from), an untrusted sender's header is payload, a bad header from the load
balancer is dropped and counted.

    client node: 198.51.100.10 (the load balancer, trusted) and crafted sources 203.0.113.0/24
    host 198.51.100.1 (forwarder) 192.0.2.1 --- 192.0.2.2 backend           (fixtures/topologies/seed.toml)
"""

import socket

import pytest
from e2e_helpers import send_path, status_has

from forwarder.core.proxy_protocol import build, build_local
from netlab import Lab, start_forwarder
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged
__all__ = ["send_path"]  # the fixture: PROXY v2 in runs on both send paths

LISTEN = "198.51.100.1:27000"
TARGET = ("198.51.100.1", 27000)
TRUST = ["--proxy-protocol-from", "198.51.100.8/29", "--stats-interval", "0.2"]


def backend_socket(lab: Lab) -> socket.socket:
    sock = lab["backend"].udp_socket("192.0.2.2", 27000)
    sock.settimeout(10)
    return sock


def load_balancer(lab: Lab) -> socket.socket:
    sock = lab["client"].udp_socket("198.51.100.10", 0)
    sock.settimeout(10)
    return sock


def test_the_backend_sees_the_client_a_trusted_load_balancers_header_names(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab)
    forwarder = start_forwarder(lab["host"], [LISTEN], ["192.0.2.2:27000"], args=[*TRUST, *send_path])
    lb = load_balancer(lab)

    lb.sendto(build(("203.0.113.7", 4242), TARGET) + b"hello", TARGET)
    assert backend.recvfrom(65535) == (b"hello", ("203.0.113.7", 4242))
    forwarder.wait_ready()
    lb.sendto(build(("203.0.113.8", 5353), TARGET) + b"another client", TARGET)
    assert backend.recvfrom(65535) == (b"another client", ("203.0.113.8", 5353))
    lb.sendto(build_local() + b"health check", TARGET)
    assert backend.recvfrom(65535) == (b"health check", lb.getsockname())
    forwarder.wait_status(status_has("since start 3 forwarded, 0 dropped; 3 flows"))


def test_an_untrusted_senders_header_is_payload_and_a_bad_one_from_the_load_balancer_is_dropped(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab)
    forwarder = start_forwarder(lab["host"], [LISTEN], ["192.0.2.2:27000"], args=[*TRUST, *send_path])
    lb = load_balancer(lab)
    lb.sendto(build(("203.0.113.7", 4242), TARGET) + b"wake", TARGET)
    assert backend.recvfrom(65535)[0] == b"wake"
    forwarder.wait_ready()

    forged = build(("192.0.2.99", 1), TARGET) + b"believe me"
    lab["client"].send_udp(src="203.0.113.50", dst=TARGET[0], sport=4000, dport=TARGET[1], payload=forged)
    assert backend.recvfrom(65535) == (forged, ("203.0.113.50", 4000))
    lb.sendto(b"no header", TARGET)
    lb.sendto(build(("203.0.113.7", 0), TARGET) + b"port 0", TARGET)
    forwarder.wait_status(status_has("proxy-header-missing 1"))
    forwarder.wait_status(status_has("zero-port 1"))
    lb.sendto(build(("203.0.113.7", 4242), TARGET) + b"after", TARGET)
    assert backend.recvfrom(65535) == (b"after", ("203.0.113.7", 4242))


NO_CAPABILITY = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


def test_sending_mode_without_any_capability_prefixes_the_header_and_relays_the_reply(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab)
    forwarder = start_forwarder(
        lab["host"],
        ["0.0.0.0:27000"],
        ["192.0.2.2:27000"],
        args=["--send-proxy-protocol", "--stats-interval", "0.2"],
        command_prefix=NO_CAPABILITY,
    )
    client = lab["client"].udp_socket("198.51.100.10", 4242)
    client.settimeout(10)
    client.connect(TARGET)  # accepts the reply only from the address it sent to

    client.send(b"question")
    data, sender = backend.recvfrom(65535)
    assert data == build(("198.51.100.10", 4242), TARGET) + b"question"
    assert sender[0] == "192.0.2.1"  # the host's own address: nothing was spoofed
    backend.sendto(b"answer", sender)
    assert client.recv(65535) == b"answer"
    forwarder.wait_status(status_has("1 replies relayed"))


def test_load_balancer_in_front_and_header_to_the_backend_together(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab)
    start_forwarder(lab["host"], [LISTEN], ["192.0.2.2:27000"], args=[*TRUST, "--send-proxy-protocol"])
    lb = load_balancer(lab)

    lb.sendto(build(("203.0.113.7", 4242), TARGET) + b"through both", TARGET)
    data, sender = backend.recvfrom(65535)
    assert data == build(("203.0.113.7", 4242), TARGET) + b"through both"
    backend.sendto(b"back", sender)
    assert lb.recvfrom(65535) == (b"back", TARGET)  # replies go to the load balancer, without a header
