"""Runs inside a node's namespace (started there by the lab) to craft and send packets with scapy.

Scapy reads interfaces and routes when it is imported, so it must be imported by a process that was
started inside the namespace; an in-process setns would leave it looking at the wrong network.
Usage: python -m netlab.agent send '<json list of datagrams>'
"""

import json
import sys
from typing import Any


def build(datagram: dict[str, Any]) -> Any:
    """A scapy IP/IPv6 + UDP packet from a datagram description (src, dst, sport, dport, payload hex)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.packet import Raw

    payload = bytes.fromhex(datagram.get("payload", ""))
    network = IPv6 if ":" in datagram["dst"] else IP
    packet = network(src=datagram["src"], dst=datagram["dst"]) / UDP(
        sport=datagram["sport"], dport=datagram["dport"]
    )
    if payload:
        packet = packet / Raw(payload)
    return packet


def send(datagrams: list[dict[str, Any]]) -> int:
    """Send each datagram at layer 3; large ones are fragmented to the route's MTU by scapy."""
    from scapy.config import conf
    from scapy.layers.inet import fragment
    from scapy.sendrecv import send as scapy_send

    conf.verb = 0
    for datagram in datagrams:
        packet = build(datagram)
        count = int(datagram.get("count", 1))
        fragsize = int(datagram.get("fragsize", 0))
        packets = [packet]
        if fragsize and ":" not in datagram["dst"]:
            packets = fragment(packet, fragsize=fragsize)  # type: ignore[no-untyped-call]
        for _ in range(count):
            scapy_send(packets)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "send":
        print("usage: python -m netlab.agent send JSON", file=sys.stderr)
        return 64
    return send(json.loads(argv[1]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
