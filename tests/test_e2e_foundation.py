"""End-to-end: a spoofed-source datagram crosses the forwarder with its source address and port intact.

client 198.51.100.10 --- 198.51.100.1 [host: forwarder] 192.0.2.1 --- 192.0.2.2 backend
spoofed client source: 203.0.113.7:4242; forwarder listens on 198.51.100.1:27000
"""

import pytest

from netlab import Lab, start_forwarder
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged

LISTEN = "198.51.100.1:27000"


def test_backend_sees_the_spoofed_client_address_and_port(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    forwarder = start_forwarder(lab["host"], [LISTEN], ["192.0.2.2:27000"])

    lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=27000, payload=b"hello")

    payload, source = backend.recvfrom(65535)
    assert (payload, source) == (b"hello", ("203.0.113.7", 4242))
    forwarder.wait_ready()


def test_the_activating_datagram_and_the_ones_after_it_are_forwarded(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    forwarder = start_forwarder(lab["host"], [LISTEN], ["192.0.2.2:27000"])

    # The first datagram wakes systemd-socket-activate, which then execs the forwarder: it must not be lost.
    lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=27000, payload=b"first")
    forwarder.wait_ready()
    lab["client"].send_udp(src="203.0.113.8", dst="198.51.100.1", sport=5353, dport=27000, payload=b"second")

    received = [backend.recvfrom(65535), backend.recvfrom(65535)]
    assert received == [(b"first", ("203.0.113.7", 4242)), (b"second", ("203.0.113.8", 5353))]
    assert forwarder.stop() == 0
