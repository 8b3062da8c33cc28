"""The forwarder's drain on its own, run inside the bench lab's host by `python -m netlab.bench.drain_cost`.

It builds the forwarder's engine as the daemon does (a listener, its route, the send path chosen), prints
{"ready": true}, and waits on a FIFO until the blaster has queued the datagrams on its listener; then it
drains them through the engine and prints a JSON summary: datagrams forwarded and dropped, and its own user
and system CPU seconds for the drain alone. Run under `valgrind --tool=callgrind`, two runs that differ
only in the count give the instructions one datagram costs (start-up cancels out).
Usage: python -m netlab.programs.drain_driver '<json options>'
"""

import json
import resource
import socket
import sys
import time

from forwarder.core.destination import parse_destination
from forwarder.core.machine import ForwardingMachine
from forwarder.io.engine import Engine
from forwarder.io.listeners import ListeningSocket
from forwarder.io.sockets import BroadcastAddresses, LocalAddresses
from forwarder.service.cli import build_routes, open_send_path
from forwarder.service.notify import Notifier

SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 512 << 20  # every queued datagram of a run waits here until the drain starts
EMPTY_DRAINS = 3  # drains that found nothing before the run counts as done


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m netlab.programs.drain_driver '<json options>'", file=sys.stderr)
        return 64
    options = json.loads(argv[0])
    host, port = options["listen"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    sock.bind((host, int(port)))
    sock.setblocking(False)
    listener = ListeningSocket(sock, "bench")
    routes = build_routes([listener], [parse_destination(options["destination"])])
    raw = open_send_path(
        options["send_path"],
        {route.destination.family for route in routes},
        relay=False,
        checksum=bool(options.get("checksum", False)),
    )
    machine = ForwardingMachine(
        4096,
        600.0,
        LocalAddresses(),
        BroadcastAddresses(),
        backends=[route.destination.sockaddr for route in routes],
    )
    engine = Engine(routes, Notifier({}), machine, raw=raw, gso=bool(options.get("gso", False)))
    print(json.dumps({"ready": True}), flush=True)
    with open(options["fifo"]) as fifo:  # blocks (no instructions spent) until the datagrams are queued
        fifo.read()
    expected = int(options["count"])
    route = routes[0]
    counters = machine.counters
    before = resource.getrusage(resource.RUSAGE_SELF)
    empty = 0
    while empty < EMPTY_DRAINS:
        seen = counters.forwarded
        engine.strategy.drain(route, time.monotonic())  # what the loop does when the socket is readable
        if counters.forwarded == seen:
            empty += 1
        if counters.forwarded >= expected:
            break
    after = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "forwarded": counters.forwarded,
        "dropped": dict(counters.dropped),
        "user_seconds": after.ru_utime - before.ru_utime,
        "system_seconds": after.ru_stime - before.ru_stime,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
