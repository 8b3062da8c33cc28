"""`netlab demo`: the seed README's deployment in a lab, run end to end and explained in a table.

Builds clients -- host -- backend, starts the forwarder under systemd-socket-activate on the host, sends
spoofed-source datagrams from the client and shows what the backend saw. Tears everything down.
"""

import sys
from dataclasses import dataclass
from typing import TextIO

from netlab.activation import start_forwarder
from netlab.lab import Lab
from netlab.topologies import seed_deployment

PORTS = (27000, 27003, 27020, 27021)
HOST = "198.51.100.1"
BACKEND = "192.0.2.2"


@dataclass
class Row:
    """One datagram of the demo: what the client presented and what the backend saw."""

    client: str
    port: int
    payload: bytes
    seen_from: str = "nothing"
    seen_payload: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.seen_from == self.client and self.seen_payload == self.payload


def run_demo(out: TextIO = sys.stdout) -> int:
    """Run the demo, print progress and the result table; return 0 only when every row is right."""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    with Lab(description="netlab demo") as lab:
        say(f"building lab {lab.lab_id}: client -- host (forwarder) -- backend ...")
        lab.build(seed_deployment())
        receivers = {port: lab["backend"].udp_socket(BACKEND, port) for port in PORTS}
        for sock in receivers.values():
            sock.settimeout(5)
        listen = [f"{HOST}:{port}" for port in PORTS]
        say(f"starting the forwarder on the host under systemd-socket-activate ({', '.join(listen)}) ...")
        forwarder = start_forwarder(
            lab["host"], listen, [f"{BACKEND}:{port}" for port in PORTS], args=["--stats-interval", "1"]
        )
        rows = [
            Row("203.0.113.7:4242", 27000, b"hello from 203.0.113.7"),
            Row("203.0.113.8:50000", 27003, b"hello from 203.0.113.8"),
            Row("203.0.113.9:27020", 27020, b"hello from 203.0.113.9"),
            Row("203.0.113.10:61000", 27021, b"hello from 203.0.113.10"),
        ]
        say("sending spoofed datagrams from the client (the first one activates the forwarder) ...")
        for row in rows:
            address, _, sport = row.client.partition(":")
            lab["client"].send_udp(
                src=address, dst=HOST, sport=int(sport), dport=row.port, payload=row.payload
            )
            try:
                payload, source = receivers[row.port].recvfrom(65535)
            except TimeoutError:
                continue
            row.seen_from, row.seen_payload = f"{source[0]}:{source[1]}", payload
        forwarder.wait_ready(timeout=5)
        status = forwarder.notify.wait_for("STATUS", lambda value: "forwarded" in value, timeout=5)
        forwarder.stop()

        say("")
        say(f"{'client (spoofed) ip:port':<26} {'to host port':<13} {'backend saw':<26} result")
        for row in rows:
            verdict = "ok" if row.ok else "WRONG"
            say(f"{row.client:<26} {row.port:<13} {row.seen_from:<26} {verdict}")
        say("")
        say(f"forwarder STATUS: {status.value}")
        say("tearing down the lab ...")
    failures = sum(not row.ok for row in rows)
    say(
        "demo passed: the backend saw every client's own address and port"
        if not failures
        else f"demo FAILED: {failures} of {len(rows)} datagrams did not arrive with the client's address"
    )
    return 0 if not failures else 1
