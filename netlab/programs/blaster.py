"""A fast UDP load generator for `netlab bench`, run inside the sender node.

It sends prebuilt IPv4/UDP packets through one raw socket with sendmmsg, rotating the source port over
`flows` flows so flows interleave as real clients do, flat out or paced to a rate, for a duration or a
count of datagrams, and prints a JSON summary (sent, seconds, cpu). With `proxy_v2` every datagram starts
with a PROXY protocol v2 header naming its own source, as a load balancer in front of go-mmproxy (or of a
forwarder reading PROXY v2) would send it.
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
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_V2_PROXY_COMMAND = 0x21  # version 2, command PROXY
PROXY_V2_INET_DGRAM = 0x12  # AF_INET over SOCK_DGRAM


FIRST_PORT = 10000  # the first source port; flow i sends from FIRST_PORT + i


@dataclass
class BlastOptions:
    """What to send: from `src` with `flows` source ports starting at `first_port`, to dst:dport."""

    src: str
    dst: str
    dport: int
    flows: int = 1
    first_port: int = FIRST_PORT
    size: int = 64
    rate: float = 0.0  # datagrams per second; 0 is flat out
    duration: float = 1.0
    cpu: int | None = None
    count: int = 0  # stop after this many datagrams (or at `duration`, whichever comes first); 0: no limit
    proxy_v2: bool = False  # prefix each payload with a PROXY v2 header naming src:sport -> dst:dport

    def __post_init__(self) -> None:
        if not 0 < self.first_port <= self.first_port + self.flows - 1 <= 65535:
            raise ValueError(
                f"flows {self.flows} from port {self.first_port}: expected ports within 1..65535 (at most "
                f"{65536 - self.first_port} flows)"
            )


def internet_checksum(data: bytes) -> int:
    """The ones' complement sum of RFC 1071 over `data` (padded to even length), complemented."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4+UDP packet for an IP_HDRINCL raw socket (the kernel fills in the IP checksum and id).

    The UDP checksum is computed, as a real client's stack does: a zero ("none") checksum would be turned
    into a wrong one by nftables rewriting the ports (the benchmark's kernel echo does), and is rare."""
    length = 8 + len(payload)
    pseudo = (
        socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    )
    checksum = internet_checksum(pseudo + struct.pack("!HHHH", sport, dport, length, 0) + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, length, checksum) + payload
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


def proxy_v2_header(src: str, sport: int, dst: str, dport: int) -> bytes:
    """A PROXY protocol v2 header (28 bytes) saying the datagram comes from src:sport and was sent to
    dst:dport (IPv4, UDP); the proxy strips it and presents src:sport to its backend."""
    addresses = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    fixed = struct.pack("!BBH", PROXY_V2_PROXY_COMMAND, PROXY_V2_INET_DGRAM, len(addresses))
    return PROXY_V2_SIGNATURE + fixed + addresses


def flow_payload(options: BlastOptions, sport: int, payload: bytes) -> bytes:
    """What one flow's datagrams carry: the payload, behind a PROXY v2 header when asked for."""
    if not options.proxy_v2:
        return payload
    return proxy_v2_header(options.src, sport, options.dst, options.dport) + payload


def blast(options: BlastOptions) -> dict[str, float]:
    """Send until `duration` has passed; return counts and the CPU time the sender used."""
    if options.cpu is not None:
        os.sched_setaffinity(0, {options.cpu})
    payload = bytes(options.size)
    ports = [options.first_port + index % options.flows for index in range(max(BATCH, options.flows))]
    packets = [
        udp_packet(options.src, options.dst, port, options.dport, flow_payload(options, port, payload))
        for port in ports
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
