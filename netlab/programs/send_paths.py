"""The send strategies `python -m netlab.bench.kernel_paths` compares, run inside the host node.

Each strategy sends 64-datagram batches as the forwarder would, from per-flow IP_TRANSPARENT sockets bound
to the clients' addresses (or a raw socket), flat out for a duration, pinned to one CPU, and prints a
JSON summary: datagrams sent, seconds, CPU seconds of this process. The `relay` mode instead forwards what
arrives on a listening socket (optionally with UDP_GRO in and UDP GSO out) and reports the trains it saw.
Usage: python -m netlab.programs.send_paths '<json options>'
"""

import ctypes
import errno
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from forwarder.core.addresses import sockaddr_bytes
from forwarder.io.gso import GSO_ERRORS, GSO_GONE, MAX_PAYLOAD, plan_runs, probe_gso
from forwarder.io.linux import SOL_UDP, UDP_SEGMENT, IOVec, MMsgHdr
from forwarder.io.sockets import set_transparent

from netlab.programs.gro import CONTROL_SPACE, enable_gro, segment_size, split
from netlab.programs.uring import UringSender

Buffer = bytes | bytearray | memoryview


class GsoSender:
    """Sends runs of datagrams of one flow from one socket, with GSO where it works and one sendto per
    datagram where it does not; `disabled` says why GSO was turned off for good (None while it is on)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = probe_gso() if enabled is None else enabled
        self.disabled: str | None = None if self.enabled else "UDP_SEGMENT not supported by this kernel"
        self.fallbacks = 0  # runs sent one by one because the GSO send failed for GSO's own reasons

    def send(
        self, sock: socket.socket, payloads: Sequence[Buffer], destination: tuple[str, int]
    ) -> tuple[int, int]:
        """Send `payloads` (in order) to `destination`. Returns (sent, errno): when errno is not 0, datagram
        `sent` failed with it and the ones after it were not tried; a GSO run fails or succeeds whole."""
        family = sock.family
        sent = 0
        for run in plan_runs([len(p) for p in payloads], max_payload=MAX_PAYLOAD.get(family, 65507)):
            chunk = payloads[run.start : run.start + run.length]
            if run.length > 1 and self.enabled:
                error = self._send_gso(sock, chunk, run.segment, destination)
                if error == 0:
                    sent += run.length
                    continue
                if error not in GSO_ERRORS:
                    return sent, error
                self.fallbacks += 1
                if error in GSO_GONE:
                    self.enabled = False
                    self.disabled = f"GSO send failed with {errno.errorcode.get(error, error)}"
            for payload in chunk:
                try:
                    sock.sendto(payload, destination)
                except OSError as failure:
                    return sent, failure.errno or errno.EIO
                sent += 1
        return sent, 0

    @staticmethod
    def _send_gso(
        sock: socket.socket, chunk: Sequence[Buffer], segment: int, destination: tuple[str, int]
    ) -> int:
        try:
            sock.sendmsg(chunk, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))], 0, destination)
        except OSError as failure:
            return failure.errno or errno.EIO
        return 0


BATCH = 64
STRATEGIES = ("sendto", "sendmmsg", "gso", "uring", "raw")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
_libc.sendmmsg.restype = ctypes.c_int


@dataclass
class SendOptions:
    """Send as `flows` clients src:first_port.. to dst:dport, `size`-byte payloads, with `strategy`."""

    strategy: str
    src: str
    dst: str
    dport: int
    flows: int = 1
    first_port: int = 10000
    size: int = 64
    duration: float = 1.0
    cpu: int | None = None
    listen: str = ""  # relay mode: the address to receive on
    gro: bool = False
    gso: bool = False


def flow_sockets(options: SendOptions) -> list[socket.socket]:
    """One unconnected transparent socket per flow, bound to the client's address and port."""
    sockets = []
    for index in range(options.flows):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        set_transparent(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((options.src, options.first_port + index))
        sockets.append(sock)
    return sockets


def run_for(duration: float, batch: Callable[[int], int]) -> dict[str, float]:
    """Call `batch(round)` (it returns datagrams sent) until `duration` has passed."""
    sent = rounds = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    end = start + duration
    while time.perf_counter() < end:
        for _ in range(16):
            sent += batch(rounds)
            rounds += 1
    elapsed = time.perf_counter() - start
    return {"sent": sent, "seconds": elapsed, "cpu_seconds": time.process_time() - cpu_start}


def by_sendto(options: SendOptions) -> dict[str, float]:
    sockets = flow_sockets(options)
    payload = bytes(options.size)
    target = (options.dst, options.dport)
    order = [sockets[i % len(sockets)] for i in range(max(BATCH, len(sockets)))]
    rounds_per_cycle = len(order) // BATCH

    def batch(round_: int) -> int:
        start = (round_ % rounds_per_cycle) * BATCH
        sent = 0
        for sock in order[start : start + BATCH]:
            try:
                sock.sendto(payload, target)
                sent += 1
            except BlockingIOError:
                pass
        return sent

    return run_for(options.duration, batch)


def by_sendmmsg(options: SendOptions) -> dict[str, float]:
    """One flow: sendmmsg of BATCH datagrams on its socket (the forwarder's batched path today)."""
    (sock,) = flow_sockets(SendOptions(**{**options.__dict__, "flows": 1}))
    payload = ctypes.create_string_buffer(bytes(options.size), options.size)
    name = ctypes.create_string_buffer(sockaddr_bytes(socket.AF_INET, (options.dst, options.dport)), 16)
    iovecs = (IOVec * BATCH)()
    headers = (MMsgHdr * BATCH)()
    for index in range(BATCH):
        iovecs[index].iov_base = ctypes.addressof(payload)
        iovecs[index].iov_len = options.size
        header = headers[index].msg_hdr
        header.msg_name, header.msg_namelen = ctypes.addressof(name), 16
        header.msg_iov, header.msg_iovlen = ctypes.addressof(iovecs[index]), 1
    fd, address = sock.fileno(), ctypes.addressof(headers)
    return run_for(options.duration, lambda _round: max(0, _libc.sendmmsg(fd, address, BATCH, 0)))


def by_gso(options: SendOptions) -> dict[str, float]:
    """One flow: one sendmsg with UDP_SEGMENT for the batch (forwarder.io.gso)."""
    (sock,) = flow_sockets(SendOptions(**{**options.__dict__, "flows": 1}))
    sender = GsoSender()
    if not sender.enabled:
        raise SystemExit(f"GSO unavailable: {sender.disabled}")
    payloads = [bytes(options.size)] * BATCH
    target = (options.dst, options.dport)

    def batch(_round: int) -> int:
        sent, _error = sender.send(sock, payloads, target)
        return sent

    result = run_for(options.duration, batch)
    result["fallbacks"] = sender.fallbacks
    return result


def by_uring(options: SendOptions) -> dict[str, float]:
    """Each datagram on its own flow's socket, BATCH of them per io_uring_enter (netlab.programs.uring)."""
    sockets = flow_sockets(options)
    ring = UringSender.create(BATCH)
    if ring is None:
        raise SystemExit("io_uring unavailable")
    payload = ctypes.create_string_buffer(bytes(options.size), options.size)
    name = ctypes.create_string_buffer(sockaddr_bytes(socket.AF_INET, (options.dst, options.dport)), 16)
    data, name_address, size = ctypes.addressof(payload), ctypes.addressof(name), options.size
    fds = [sockets[i % len(sockets)].fileno() for i in range(max(BATCH, len(sockets)))]
    rounds_per_cycle = len(fds) // BATCH

    def batch(round_: int) -> int:
        start = (round_ % rounds_per_cycle) * BATCH
        for fd in fds[start : start + BATCH]:
            ring.add(fd, data, size, name_address, 16)
        return sum(1 for result in ring.submit() if result >= 0)

    return run_for(options.duration, batch)


def by_raw(options: SendOptions) -> dict[str, float]:
    """Across flows: one raw IP_HDRINCL socket, sendmmsg of BATCH packets whose IPv4+UDP headers (UDP
    checksum 0) are packed per datagram in front of the payload, as a forwarder would do in place."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    slot = 28 + options.size
    buffer = bytearray(slot * BATCH)
    array = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    name = ctypes.create_string_buffer(sockaddr_bytes(socket.AF_INET, (options.dst, 0)), 16)
    iovecs = (IOVec * BATCH)()
    headers = (MMsgHdr * BATCH)()
    for index in range(BATCH):
        iovecs[index].iov_base = ctypes.addressof(array) + index * slot
        iovecs[index].iov_len = slot
        header = headers[index].msg_hdr
        header.msg_name, header.msg_namelen = ctypes.addressof(name), 16
        header.msg_iov, header.msg_iovlen = ctypes.addressof(iovecs[index]), 1
    src, dst = socket.inet_aton(options.src), socket.inet_aton(options.dst)
    packer = struct.Struct("!BBHHHBBH4s4sHHHH")
    ports = [options.first_port + i % options.flows for i in range(max(BATCH, options.flows))]
    rounds_per_cycle = len(ports) // BATCH
    fd, address = sock.fileno(), ctypes.addressof(headers)

    def batch(round_: int) -> int:
        start = (round_ % rounds_per_cycle) * BATCH
        offset = 0
        for sport in ports[start : start + BATCH]:
            packer.pack_into(
                buffer,
                offset,
                0x45,
                0,
                slot,
                0,
                0x4000,
                64,
                17,
                0,
                src,
                dst,
                sport,
                options.dport,
                8 + options.size,
                0,
            )
            offset += slot
        return max(0, int(_libc.sendmmsg(fd, address, BATCH, 0)))

    return run_for(options.duration, batch)


def relay(options: SendOptions) -> dict[str, float]:
    """Forward what arrives on `listen` to dst:dport from per-flow transparent sockets, for `duration`
    after the first datagram; with `gro` receive trains, with `gso` send each train as one GSO send."""
    host, port = options.listen.rsplit(":", 1)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
    if options.gro and not enable_gro(listener):
        raise SystemExit("UDP_GRO unavailable")
    listener.bind((host, int(port)))
    print(json.dumps({"ready": True}), flush=True)
    sender = GsoSender() if options.gso else None
    flows: dict[tuple[str, int], socket.socket] = {}
    target = (options.dst, options.dport)
    buffer = bytearray(65536)
    view = memoryview(buffer)
    received = buffers = trains = 0
    listener.settimeout(30.0)
    listener.recv_into(buffer)  # the first datagram starts the clock (it is not forwarded)
    listener.settimeout(0.5)
    cpu_start = time.process_time()
    start = time.perf_counter()
    end = start + options.duration
    while time.perf_counter() < end:
        try:
            length, ancdata, _flags, client = listener.recvmsg_into([buffer], CONTROL_SPACE)
        except TimeoutError:
            continue
        sock = flows.get(client)
        if sock is None:
            sock = flows[client] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            set_transparent(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(client)
        datagrams = split(view[:length], segment_size(ancdata))
        buffers += 1
        received += len(datagrams)
        trains += len(datagrams) > 1
        if sender is not None and len(datagrams) > 1:
            sender.send(sock, datagrams, target)
        else:
            for datagram in datagrams:
                sock.sendto(datagram, target)
    elapsed = time.perf_counter() - start
    return {
        "sent": received,
        "seconds": elapsed,
        "cpu_seconds": time.process_time() - cpu_start,
        "buffers": buffers,
        "trains": trains,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m netlab.programs.send_paths JSON", file=sys.stderr)
        return 64
    options = SendOptions(**json.loads(argv[0]))
    if options.cpu is not None:
        os.sched_setaffinity(0, {options.cpu})
    strategies = {
        "sendto": by_sendto,
        "sendmmsg": by_sendmmsg,
        "gso": by_gso,
        "uring": by_uring,
        "raw": by_raw,
        "relay": relay,
    }
    if options.strategy not in strategies:
        print(f"unknown strategy {options.strategy!r}: expected one of {sorted(strategies)}", file=sys.stderr)
        return 64
    print(json.dumps(strategies[options.strategy](options)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
