"""The kernel send paths of forwarder.io.gso and netlab.programs.uring in the seed lab: from per-flow
transparent sockets in the host, bound to the client's address, datagrams reach the backend separate, intact
and with the client's source; and how the backend's nftables counter counts a GSO run.

    client 198.51.100.10 --- 198.51.100.1 [host: sender] 192.0.2.1 --- 192.0.2.2 backend
"""

import ctypes
import socket

import pytest

from forwarder.core.addresses import sockaddr_bytes
from forwarder.io.sockets import set_transparent
from netlab import Lab, expect
from netlab.bench.kernel_paths import delivered_datagrams
from netlab.lab.nft import apply_ruleset, counter_values
from netlab.lab.offload import set_features
from netlab.programs.send_paths import GsoSender
from netlab.programs.uring import UringSender
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged

CLIENT = "198.51.100.10"
BACKEND = ("192.0.2.2", 27000)
COUNT_AT_BACKEND = """table inet counted {
    counter seen { }
    chain prerouting {
        type filter hook prerouting priority raw; policy accept;
        meta l4proto udp udp dport 27000 counter name "seen"
    }
}
"""
PAYLOADS = [bytes([65 + n]) * 64 for n in range(9)] + [b"last"]


def client_socket(lab: Lab, port: int) -> socket.socket:
    """A per-flow socket in the host, as the forwarder opens it: transparent, bound to the client."""
    sock = lab["host"].open_socket(socket.AF_INET, socket.SOCK_DGRAM)
    set_transparent(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((CLIENT, port))
    return sock


def test_a_gso_run_arrives_as_separate_datagrams_from_the_client_and_counts_as_one_packet(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    apply_ruleset(lab["backend"], COUNT_AT_BACKEND)
    gso = GsoSender()
    assert gso.enabled, gso.disabled
    assert gso.send(client_socket(lab, 4242), PAYLOADS, BACKEND) == (len(PAYLOADS), 0)
    for payload in PAYLOADS:
        backend.datagram(src=f"{CLIENT}:4242", payload=payload).arrives(within=5)
    backend.nothing_else()
    assert [arrival.payload for arrival in backend.arrived] == PAYLOADS  # in order
    packets, octets = counter_values(lab["backend"], "inet", "counted", "seen")
    assert packets == 1  # one super-packet crossed the veth: a packet counter is fooled
    assert octets == 28 + sum(len(p) for p in PAYLOADS)  # its bytes are all the datagrams' payloads


def test_segmented_at_the_host_egress_a_gso_run_counts_as_its_datagrams(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    apply_ruleset(lab["backend"], COUNT_AT_BACKEND)
    set_features(lab["host"], "to-backend", {"tx-udp-segmentation": False})
    payloads = [bytes([97 + n]) * 64 for n in range(8)]
    assert GsoSender().send(client_socket(lab, 4243), payloads, BACKEND) == (8, 0)
    backend.datagrams(count=8, src=f"{CLIENT}:4243", size=64).arrives(within=5)
    packets, octets = counter_values(lab["backend"], "inet", "counted", "seen")
    assert packets == 8
    assert delivered_datagrams(packets, octets, 64) == 8


def test_one_io_uring_enter_sends_for_several_flows_each_with_its_client_source(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    ring = UringSender.create(8)
    assert ring is not None, "io_uring is enabled in this kernel"
    lab.defer(ring.close)
    sockets = [client_socket(lab, 5000 + n) for n in range(3)]
    name = ctypes.create_string_buffer(sockaddr_bytes(socket.AF_INET, BACKEND), 16)
    payloads = [ctypes.create_string_buffer(b"flow-%d" % n, 6) for n in range(3)]
    for sock, payload in zip(sockets, payloads, strict=True):
        ring.add(sock.fileno(), ctypes.addressof(payload), 6, ctypes.addressof(name), 16)
    assert ring.submit() == [6, 6, 6]
    for n in range(3):
        backend.datagram(src=f"{CLIENT}:{5000 + n}", payload=b"flow-%d" % n).arrives(within=5)
    backend.nothing_else()
