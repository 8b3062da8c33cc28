"""Shared pieces of the forwarder's end-to-end tests: an echo backend, kernel counters of arrivals, the
blaster in the background, and STATUS= predicates."""

import contextlib
import json
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from netlab import Lab
from netlab.lab.nft import apply_ruleset, counter_packets
from netlab.lab.node import LabNode, LabResources
from netlab.lab.process import Process, python_env
from netlab.service.status import status_totals


@pytest.fixture(params=["raw", "sockets"])
def send_path(request: pytest.FixtureRequest) -> list[str]:
    """The forwarder's arguments choosing each send path in turn: a test of sending runs on both."""
    return ["--send-path", str(request.param)]


def serve_in_thread(
    lab: LabResources, sock: socket.socket, answer: Callable[[bytes, Any], bytes | None]
) -> None:
    """Answer every datagram on `sock` (with `answer(data, peer)`; None: no answer) in a thread that stops
    before the lab closes the socket (cleanup runs last-registered first): a thread still blocked on a
    closed descriptor would read from whatever socket a later test on this worker is given that number."""
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = answer(data, peer)
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def finish() -> None:
        stop.set()
        thread.join(5)

    lab.defer(finish)


def start_echo(lab: Lab, address: str, port: int) -> None:
    """A UDP echo server in the backend, answering every datagram to its sender until the lab closes."""
    serve_in_thread(lab, lab["backend"].udp_socket(address, port), lambda data, peer: b"echo:" + data)


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


def count_arrivals(node: LabNode, port: int) -> Callable[[], int]:
    """Count (and drop) UDP datagrams to `port` arriving at `node` with an nftables counter, so no userspace
    receiver can be the bottleneck; returns a function reading the count."""
    return _udp_counter(node, port, "prerouting", "drop")


def count_departures(node: LabNode, port: int) -> Callable[[], int]:
    """Count UDP datagrams to `port` that programs in `node` send (raw sockets included), with nftables;
    returns a function reading the count. Exact even for a sender killed before it could report."""
    return _udp_counter(node, port, "output", "")


def _udp_counter(node: LabNode, port: int, hook: str, verdict: str) -> Callable[[], int]:
    table = f"{hook}_{port}"
    apply_ruleset(
        node,
        f"table inet {table} {{\n"
        "    counter seen { }\n"
        f"    chain {hook} {{\n"
        f"        type filter hook {hook} priority raw; policy accept;\n"
        f'        meta l4proto udp udp dport {port} counter name "seen" {verdict}\n'
        "    }\n"
        "}\n",
        label=table,
    )
    return lambda: counter_packets(node, "inet", table, "seen")


def start_blaster(node: LabNode, **options: object) -> Process:
    """Run netlab.programs.blaster in `node` in the background (options: src, dst, dport, flows,
    first_port, size, rate, duration, count); read its summary with `blaster_summary`."""
    return node.run(
        [sys.executable, "-m", "netlab.programs.blaster", json.dumps(options)],
        label="blaster",
        env=python_env(),
    )


def blaster_summary(process: Process, timeout: float = 60.0) -> dict[str, float]:
    """Wait for a blaster to finish and return its JSON summary (sent, seconds, cpu_seconds)."""
    code = process.wait(timeout)
    output = process.output()
    assert code == 0, output
    return dict(json.loads(output.strip().splitlines()[-1]))


class TotalsPredicate:
    """Accepts a STATUS= value whose totals since start satisfy `check(forwarded, dropped)`."""

    def __init__(self, check: Callable[[int, int], bool], description: str) -> None:
        self.check = check
        self.description = description

    def __call__(self, value: str) -> bool:
        totals = status_totals(value)
        return totals is not None and self.check(*totals)

    def __repr__(self) -> str:
        return f"STATUS with totals {self.description}"
