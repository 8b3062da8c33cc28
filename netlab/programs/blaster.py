"""A fast UDP load generator for `netlab bench`, run inside the sender node.

It sends prebuilt IPv4/UDP packets through one raw socket with sendmmsg, rotating the source port over
`flows` flows so flows interleave as real clients do, flat out or paced to a rate, for a duration or a
count of datagrams, and prints a JSON summary (sent, seconds, cpu).
Usage: python -m netlab.programs.blaster '<json options>'
"""

import json
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass

from netlab.programs.mmsg import Batch, sockaddr_in

BATCH = 512


@dataclass
class BlastOptions:
    """What to send: from `src` with `flows` source ports starting at `first_port`, to dst:dport."""

    src: str
    dst: str
    dport: int
    flows: int = 1
    first_port: int = 10000
    size: int = 64
    rate: float = 0.0  # datagrams per second; 0 is flat out
    duration: float = 1.0
    cpu: int | None = None
    count: int = 0  # stop after this many datagrams (or at `duration`, whichever comes first); 0: no limit


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4+UDP packet for an IP_HDRINCL raw socket (the kernel fills in the IP checksum and id;
    a zero UDP checksum means "none" over IPv4)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0x4000,  # don't fragment
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return ip + udp


def blast(options: BlastOptions) -> dict[str, float]:
    """Send until `duration` has passed; return counts and the CPU time the sender used."""
    if options.cpu is not None:
        os.sched_setaffinity(0, {options.cpu})
    payload = bytes(options.size)
    packets = [
        udp_packet(
            options.src, options.dst, options.first_port + index % options.flows, options.dport, payload
        )
        for index in range(max(BATCH, options.flows) if options.flows > 1 else BATCH)
    ]
    batches = [
        Batch(packets[start : start + BATCH], sockaddr_in(options.dst, 0))
        for start in range(0, len(packets), BATCH)
    ]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    fd = sock.fileno()
    sent = 0
    rounds = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    end = start + options.duration
    now = start
    limit = options.count or None
    while now < end and (limit is None or sent < limit):
        sent += batches[rounds % len(batches)].send(fd, None if limit is None else limit - sent)
        rounds += 1
        now = time.perf_counter()
        if options.rate:
            ahead = sent / options.rate - (now - start)
            if ahead > 0:
                time.sleep(ahead)  # pacing the offered load, not waiting for an event
                now = time.perf_counter()
    elapsed = time.perf_counter() - start
    sock.close()
    return {"sent": sent, "seconds": elapsed, "cpu_seconds": time.process_time() - cpu_start}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m netlab.programs.blaster JSON", file=sys.stderr)
        return 64
    result = blast(BlastOptions(**json.loads(argv[0])))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
