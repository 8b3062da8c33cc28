"""The forwarder's drain on its own, run inside the bench lab's host by `python -m netlab.bench.drain_cost`.

It builds the forwarder's engine as the daemon does (a listener, its route, the send path chosen), prints
{"ready": true}, and waits on a FIFO until the blaster has queued the datagrams on its listener; then it
drains them through the engine and prints a JSON summary: datagrams forwarded and dropped, and its own user
and system CPU seconds for the drain alone. Run under `valgrind --tool=callgrind`, two runs that differ
only in the count give the instructions one datagram costs (start-up cancels out).

With "reply_port" it measures the reply path of --reply-tproxy instead: the engine has the one reply socket
on that port; the datagrams queued first (one per flow) open the flows, it prints {"flows": N}, and after a
second "go" on the FIFO (the backend's replies are queued on the reply socket by then) it reads them with
the engine's steered_pass, which relays them with sendmmsg; the summary counts replies relayed. "stage"
stops a run short so the parts of a reply's cost can be told apart: "receive" only reads the replies
(recvmmsg), "match" does everything but the sendmmsg system call, "relay" (the default) all of it.
Usage: python -m netlab.programs.drain_driver '<json options>'
"""

import json
import resource
import socket
import sys
import time
from typing import Any

from forwarder.core.destination import parse_destination
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import Settings
from forwarder.io.engine import Engine
from forwarder.io.listeners import ListeningSocket
from forwarder.io.reply_socket import open_reply_socket
from forwarder.io.sockets import BroadcastAddresses, LocalAddresses
from forwarder.service.cli import build_routes, open_send_path
from forwarder.service.notify import Notifier

SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 512 << 20  # every queued datagram of a run waits here until the drain starts
EMPTY_DRAINS = 3  # drains that found nothing before the run counts as done
STAGES = ("receive", "match", "relay")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m netlab.programs.drain_driver '<json options>'", file=sys.stderr)
        return 64
    options = json.loads(argv[0])
    stage = options.get("stage", "relay")
    if stage not in STAGES:
        print(f"drain_driver: stage {stage!r}: expected one of {', '.join(STAGES)}", file=sys.stderr)
        return 64
    host, port = options["listen"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    sock.bind((host, int(port)))
    sock.setblocking(False)
    listener = ListeningSocket(sock, "bench")
    routes = build_routes([listener], [parse_destination(options["destination"])])
    reply_port = options.get("reply_port")
    settings = Settings(
        send_path=options["send_path"],
        udp_checksum="compute" if options.get("checksum", False) else "none",
        gso=bool(options.get("gso", False)),
        max_flows=4096,
        flow_idle_timeout=600.0,
        reply="relay" if reply_port is not None else "direct",
        reply_tproxy=reply_port,
    )
    families = {route.destination.family for route in routes}
    raw = open_send_path(settings, families)
    reply_socket = None
    if reply_port is not None:
        reply_socket = open_reply_socket(families, int(reply_port))
        reply_socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    machine = ForwardingMachine(
        settings,
        is_local=LocalAddresses(),
        is_broadcast=BroadcastAddresses(),
        backends=[route.destination.sockaddr for route in routes],
    )
    engine = Engine(routes, Notifier({}), machine, raw=raw, reply_socket=reply_socket)
    print(json.dumps({"ready": True}), flush=True)
    with open(options["fifo"]) as fifo:  # blocks (no instructions spent) until the datagrams are queued
        fifo.read()
    if reply_socket is None:
        summary = drain_listener(engine, int(options["count"]))
    else:
        drain_listener(engine, int(options["flows"]))
        print(json.dumps({"flows": len(machine.flows)}), flush=True)
        with open(options["fifo"]) as fifo:  # until the replies are queued on the reply socket
            fifo.read()
        summary = drain_replies(engine, reply_socket, int(options["count"]), stage)
    print(json.dumps(summary), flush=True)
    return 0


def drain_listener(engine: Engine, expected: int) -> dict[str, Any]:
    """Forward what is queued on the listener (`expected` datagrams), as the loop does when it is readable."""
    route = engine.routes[0]
    counters = engine.machine.counters
    before = resource.getrusage(resource.RUSAGE_SELF)
    empty = 0
    while empty < EMPTY_DRAINS:
        seen = counters.forwarded
        engine.strategy.drain(route, time.monotonic())
        if counters.forwarded == seen:
            empty += 1
        if counters.forwarded >= expected:
            break
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "forwarded": counters.forwarded,
        "dropped": dict(counters.dropped),
        "user_seconds": after.ru_utime - before.ru_utime,
        "system_seconds": after.ru_stime - before.ru_stime,
    }


def drain_replies(engine: Engine, reply_socket: socket.socket, expected: int, stage: str) -> dict[str, Any]:
    """Read (and up to `stage`, relay) the `expected` replies queued on the reply socket, as the loop does
    when it is readable."""
    counters = engine.machine.counters
    batch = engine._replies
    if batch is None:
        raise SystemExit("drain_driver: this libc has no recvmmsg/sendmmsg: nothing batched to measure")
    if stage == "match":  # every step but the system call: the kernel takes the whole batch
        batch._sendmmsg = lambda fd, address, count, flags: count
    read = 0
    fd = reply_socket.fileno()
    before = resource.getrusage(resource.RUSAGE_SELF)
    empty = 0
    while empty < EMPTY_DRAINS:
        if stage == "receive":
            count = batch.receive(fd, 0, batch.capacity)
        else:
            seen = counters.relayed + sum(counters.reply_dropped.values())
            engine.steered_pass(time.monotonic())
            count = counters.relayed + sum(counters.reply_dropped.values()) - seen
        read += count
        if not count:
            empty += 1
        if read >= expected:
            break
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "forwarded": read,
        "relayed": counters.relayed,
        "dropped": dict(counters.reply_dropped),
        "user_seconds": after.ru_utime - before.ru_utime,
        "system_seconds": after.ru_stime - before.ru_stime,
    }


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
