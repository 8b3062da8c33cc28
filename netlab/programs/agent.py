"""Runs inside a node's namespace (started there by the lab) to craft and send packets with scapy.

Scapy reads interfaces and routes when it is imported, so it must be imported by a process that was
started inside the namespace; an in-process setns would leave it looking at the wrong network.
Usage: python -m netlab.programs.agent send FILE   (FILE: a JSON list of Crafted datagrams)

Datagrams larger than the outgoing interface's MTU are fragmented here (IPv4 fragments, or an IPv6
fragment header), as a sending kernel would: scapy's layer-3 socket would otherwise refuse them.
"""

import errno
import fcntl
import json
import socket
import struct
import sys
import time
from typing import Any

from netlab.programs.crafted import Crafted

SIOCGIFMTU = 0x8921


def interface_mtu(ifname: str) -> int:
    """The MTU of `ifname` in this process's namespace (sysfs would show the root namespace's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16si", ifname.encode(), 0)
        return int(struct.unpack("16si", fcntl.ioctl(sock, SIOCGIFMTU, request))[1])


def build(datagram: Crafted) -> list[Any]:
    """The scapy packets (one, or its fragments) for `datagram`."""
    from scapy.config import conf
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
    from scapy.packet import Raw

    udp = UDP(sport=datagram.sport, dport=datagram.dport) / Raw(datagram.payload)
    if ":" in datagram.dst:
        iface = conf.route6.route(datagram.dst)[0]
        size = datagram.fragment_size or interface_mtu(iface)
        packet = IPv6(src=datagram.src, dst=datagram.dst) / udp
        if len(packet) <= size:
            return [packet]
        with_header = IPv6(src=datagram.src, dst=datagram.dst) / IPv6ExtHdrFragment() / udp
        return list(fragment6(with_header, size))  # type: ignore[no-untyped-call]
    iface = conf.route.route(datagram.dst)[0]
    packet4 = IP(src=datagram.src, dst=datagram.dst) / udp
    limit = datagram.fragment_size or interface_mtu(iface) - 20
    if len(packet4) - 20 <= limit and not datagram.fragment_size:
        return [packet4]
    return list(fragment(packet4, fragsize=max(8, limit - limit % 8)))  # type: ignore[no-untyped-call]


def send(datagrams: list[Crafted]) -> int:
    """Send each datagram (`count` times) at layer 3, in order, through one scapy socket."""
    from scapy.config import conf

    conf.verb = 0
    packets = [packet for datagram in datagrams for _ in range(datagram.count) for packet in build(datagram)]
    sock = conf.L3socket()
    try:
        for packet in packets:
            send_one(sock, packet)
    finally:
        sock.close()
    return 0


def send_one(sock: Any, packet: Any, patience: float = 5.0) -> None:
    """Send one packet; when the interface's queue is full (ENOBUFS: a burst of fragments outran it, which
    a loaded machine makes likely) try again until it drains, for at most `patience` seconds."""
    deadline = time.monotonic() + patience
    delay = 0.0005
    while True:
        try:
            sock.send(packet)
            return
        except OSError as error:
            if error.errno != errno.ENOBUFS or time.monotonic() > deadline:
                raise
        time.sleep(delay)  # no event says the queue drained: back off briefly and try again
        delay = min(delay * 2, 0.02)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "send":
        print("usage: python -m netlab.programs.agent send FILE", file=sys.stderr)
        return 64
    with open(argv[1]) as handle:
        return send([Crafted.from_json(item) for item in json.load(handle)])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
