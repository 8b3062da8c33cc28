"""Shared pieces of the forwarder's end-to-end tests: the dual-stack topology, UDP socket tables read from
/proc, and an echo backend.

    client 198.51.100.10 2001:db8:1::10 --- 198.51.100.1 2001:db8:1::1 [host: forwarder]
    [host] 192.0.2.1 2001:db8:2::1 --- 192.0.2.2 2001:db8:2::2 backend
"""

import ipaddress
import socket
import threading

from netlab import Lab
from netlab.topology import Topology


def dual_stack_deployment() -> Topology:
    """The seed deployment with IPv6 next to IPv4 on both links; the host forwards both families."""
    return (
        Topology()
        .node("client")
        .node("host")
        .node("backend")
        .sysctl("host", "net.ipv4.ip_forward", "1")
        .sysctl("host", "net.ipv6.conf.all.forwarding", "1")
        .link(
            "client",
            "host",
            a_addresses=["198.51.100.10/24", "2001:db8:1::10/64"],
            b_addresses=["198.51.100.1/24", "2001:db8:1::1/64"],
        )
        .link(
            "host",
            "backend",
            a_addresses=["192.0.2.1/24", "2001:db8:2::1/64"],
            b_addresses=["192.0.2.2/24", "2001:db8:2::2/64"],
        )
        .route("client", "default", via="198.51.100.1")
        .route("client", "default", via="2001:db8:1::1")
        .route("host", "203.0.113.0/24", via="198.51.100.10")
        .route("backend", "default", via="192.0.2.1")
        .route("backend", "default", via="2001:db8:2::1")
    )


def _decode(hex_address: str) -> tuple[str, int]:
    address, _, port = hex_address.partition(":")
    raw = bytes.fromhex(address)
    if len(raw) == 4:
        host = str(ipaddress.IPv4Address(raw[::-1]))
    else:  # four host-order 32-bit words
        host = str(ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))
    return host, int(port, 16)


def udp_sockets_bound(pid: int) -> list[tuple[str, int]]:
    """Every (address, port) a UDP socket is bound to in the network namespace of `pid`."""
    bound = []
    for table in ("udp", "udp6"):
        with open(f"/proc/{pid}/net/{table}") as handle:
            next(handle)
            bound += [_decode(line.split()[1]) for line in handle]
    return bound


def _echo_forever(sock: socket.socket) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(65535)
            sock.sendto(b"echo:" + data, peer)
        except OSError:
            return


def start_echo(lab: Lab, address: str, port: int) -> None:
    """A UDP echo server in the backend, answering every datagram to its sender until the lab closes."""
    sock = lab["backend"].udp_socket(address, port)
    threading.Thread(target=_echo_forever, args=(sock,), daemon=True).start()


def status_has(fragment: str) -> "StatusPredicate":
    return StatusPredicate(fragment)


class StatusPredicate:
    """Accepts a STATUS= value containing `fragment` (readable in a timeout message)."""

    def __init__(self, fragment: str) -> None:
        self.fragment = fragment

    def __call__(self, value: str) -> bool:
        return self.fragment in value

    def __repr__(self) -> str:
        return f"STATUS containing {self.fragment!r}"
