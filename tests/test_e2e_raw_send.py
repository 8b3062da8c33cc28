"""The raw send path end to end: the UDP checksum the backend receives (read from a capture: veth accepts a
wrong one), through nftables DNAT and a port rewrite as on a Docker host; thousands of clients without a
socket each; and the fallback to per-client sockets where only CAP_NET_ADMIN is granted.

    client 198.51.100.10 --- 198.51.100.1 [host: forwarder] 192.0.2.1 --- 192.0.2.2 backend   (seed)
    client --- [host: forwarder, docker0, DNAT c1:27000 -> c2:27001] === c1 192.0.2.2, c2 192.0.2.3
                                                                          (docker-bridge)
"""

import os
import socket

import pytest
from e2e_helpers import blaster_summary, count_arrivals, start_blaster, status_has
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6  # noqa: F401 -- binds IPv6 under Ether, for the dissection
from scapy.layers.l2 import Ether
from test_systemd_units import (
    NobodyForwarder,
    drop_privileges,
    forwarder_for_nobody,
    notify_for_nobody,
)

from forwarder.io.rawsend import open_raw_socket
from netlab import Lab, load_topology, start_forwarder
from netlab.addresses import format_endpoint
from netlab.lab import netns
from netlab.lab.capture import ETH_P_ALL
from netlab.lab.nft import apply_ruleset
from netlab.lab.wait import wait_until
from netlab.service.containers import enable_container_host
from netlab.service.notify import NotifyReceiver
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged
__all__ = ["forwarder_for_nobody", "notify_for_nobody"]  # fixtures

# Sends what the forwarder addresses to c1:27000 to c2:27001 instead: the kernel rewrites the address, the
# port and (when there is one) the checksum of every datagram.
REDIRECT = """table inet raw_send_dnat {
    chain output {
        type nat hook output priority -100; policy accept;
        ip daddr 192.0.2.2 udp dport 27000 dnat ip to 192.0.2.3:27001
        ip6 daddr 2001:db8:2::2 udp dport 27000 dnat ip6 to [2001:db8:2::3]:27001
    }
}
"""
ADDRESSES = {
    "ipv4": ("198.51.100.10", "198.51.100.1", "192.0.2.2", "192.0.2.3"),
    "ipv6": ("2001:db8:51::10", "2001:db8:51::1", "2001:db8:2::2", "2001:db8:2::3"),
}


def tap(lab: Lab, node: str, ifname: str) -> socket.socket:
    """A packet socket seeing every frame of `node`'s interface `ifname` from now on."""
    sock = netns.socket_in(lab[node].namespace, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    lab.defer(sock.close)
    sock.bind((ifname, ETH_P_ALL))
    sock.settimeout(5)
    return sock


def next_udp(sock: socket.socket, port: int) -> UDP:
    """The UDP header (and payload) of the next datagram to `port` the tap sees (in c2: after DNAT)."""
    while True:
        packet = Ether(sock.recv(65535))
        if UDP in packet and packet[UDP].dport == port:
            udp: UDP = packet[UDP]
            return udp


def recomputed(udp: UDP) -> int:
    """The checksum scapy computes for the captured datagram (with its IP header's addresses)."""
    below = udp.underlayer
    assert below is not None
    packet = below.copy()
    del packet[UDP].chksum
    return int(packet.__class__(bytes(packet))[UDP].chksum)


@pytest.mark.parametrize(
    ("family", "option", "expected"),
    [
        ("ipv4", "none", "zero"),
        ("ipv4", "compute", "correct"),
        ("ipv6", "none", "correct"),  # the option is IPv4's: IPv6 always gets the kernel's checksum
    ],
)
@pytest.mark.parametrize("size", [5, 1001])  # odd: the sum pads the last byte
def test_the_checksum_the_backend_receives_through_dnat_and_a_port_rewrite(
    lab: Lab, family: str, option: str, expected: str, size: int
) -> None:
    lab.build(load_topology("docker-bridge"))
    enable_container_host(lab["host"], ["192.0.2.0/24", "2001:db8:2::/64"])
    apply_ruleset(lab["host"], REDIRECT)
    client_address, host, c1, c2 = ADDRESSES[family]
    backend = lab["c2"].udp_socket(c2, 27001)
    backend.settimeout(10)
    start_forwarder(
        lab["host"],
        [format_endpoint(host, 27000)],
        [format_endpoint(c1, 27000)],
        args=["--send-path", "raw", "--udp-checksum", option],
    )
    client = lab["client"].udp_socket(client_address, 4242)
    seen = tap(lab, "c2", "eth0")
    payload = bytes(range(256))[::-1] * (size // 256) + b"x" * (size % 256)

    client.sendto(payload, (host, 27000))

    udp = next_udp(seen, 27001)
    assert udp.sport == 4242
    received, source = backend.recvfrom(65535)
    assert (received, source[:2]) == (payload, (client_address, 4242))
    if expected == "zero":
        assert udp.chksum == 0
    else:
        assert udp.chksum == recomputed(udp) != 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_two_thousand_clients_go_through_the_raw_path_with_no_file_descriptor_each(lab: Lab) -> None:
    lab.build(seed_deployment())
    arrivals = count_arrivals(lab["backend"], 27000)
    # The blaster sends in bursts of 512: room for them in the listener's queue.
    args = ["--stats-interval", "0.2", "--receive-buffer", str(8 << 20)]
    forwarder = start_forwarder(lab["host"], ["198.51.100.1:27000"], ["192.0.2.2:27000"], args=args)
    lab["client"].send_udp(src="198.51.100.10", dst="198.51.100.1", sport=4242, dport=27000, payload=b"x")
    wait_until(lambda: arrivals() == 1, "the first datagram at the backend", 10)
    forwarder.wait_ready()
    before = open_fds(forwarder.process.pid)

    blaster = start_blaster(
        lab["client"], src="198.51.100.10", dst="198.51.100.1", dport=27000, flows=2000, count=2000,
        rate=2000, duration=10,
    )  # fmt: skip
    assert blaster_summary(blaster)["sent"] == 2000

    wait_until(lambda: arrivals() == 2001, "2,000 more datagrams at the backend", 15)
    forwarder.wait_status(status_has("since start 2001 forwarded, 0 dropped; 2001 flows"))
    assert open_fds(forwarder.process.pid) == before


def test_with_cap_net_admin_alone_the_forwarder_falls_back_to_per_client_sockets_and_says_why(
    lab: Lab, notify_for_nobody: NotifyReceiver, forwarder_for_nobody: NobodyForwarder
) -> None:
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    forwarder = start_forwarder(
        lab["host"],
        ["198.51.100.1:27000"],
        ["192.0.2.2:27000"],
        env=forwarder_for_nobody.env,
        command_prefix=drop_privileges("+net_admin"),
        program=forwarder_for_nobody.program,
    )

    lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=27000, payload=b"first")

    assert backend.recvfrom(65535) == (b"first", ("203.0.113.7", 4242))
    notify_for_nobody.wait_for("READY", "1", timeout=15, is_alive=forwarder.is_running)
    assert forwarder.stop() == 0
    output = forwarder.process.output()
    assert output.count("--send-path raw: cannot open a raw socket") == 1
    assert "CAP_NET_RAW is missing" in output
    assert "sending from one transparent socket per client instead" in output


def test_without_cap_net_raw_and_cap_net_admin_the_forwarder_exits_77_naming_cap_net_raw(
    lab: Lab, notify_for_nobody: NotifyReceiver, forwarder_for_nobody: NobodyForwarder
) -> None:
    lab.build(seed_deployment())
    forwarder = start_forwarder(
        lab["host"],
        ["198.51.100.1:27000"],
        ["192.0.2.2:27000"],
        env=forwarder_for_nobody.env,
        command_prefix=drop_privileges(""),
        program=forwarder_for_nobody.program,
    )

    lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=27000, payload=b"x")

    assert forwarder.process.wait(15) == 77
    assert "AmbientCapabilities=CAP_NET_RAW" in forwarder.process.output()


def test_with_cap_net_raw_alone_the_raw_path_forwards_the_client_as_nobody(
    lab: Lab, notify_for_nobody: NotifyReceiver, forwarder_for_nobody: NobodyForwarder
) -> None:
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    forwarder = start_forwarder(
        lab["host"],
        ["198.51.100.1:27000"],
        ["192.0.2.2:27000"],
        env=forwarder_for_nobody.env,
        command_prefix=drop_privileges("+net_raw"),
        program=forwarder_for_nobody.program,
    )

    lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=27000, payload=b"first")
    lab["client"].send_udp(src="203.0.113.8", dst="198.51.100.1", sport=53, dport=27000, payload=b"second")

    assert backend.recvfrom(65535) == (b"first", ("203.0.113.7", 4242))
    assert backend.recvfrom(65535) == (b"second", ("203.0.113.8", 53))
    notify_for_nobody.wait_for("READY", "1", timeout=15, is_alive=forwarder.is_running)
    assert forwarder.stop() == 0
    assert "cannot open a raw socket" not in forwarder.process.output()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_nothing_queues_on_the_raw_socket_while_the_host_receives_udp(lab: Lab, family: int) -> None:
    lab.build(load_topology("dual-stack"))
    raw = netns.run_in(lab["host"].namespace, lambda: open_raw_socket(socket.AddressFamily(family)))
    lab.defer(raw.close)
    address = "198.51.100.1" if family == socket.AF_INET else "2001:db8:51::1"
    receiver = lab["host"].udp_socket(address, 9999)
    receiver.settimeout(5)
    sender = lab["client"].udp_socket("198.51.100.10" if family == socket.AF_INET else "2001:db8:51::10", 0)

    sender.sendto(b"copied?", (address, 9999))

    assert receiver.recv(100) == b"copied?"
    with pytest.raises(BlockingIOError):
        raw.recv(100, socket.MSG_DONTWAIT)
