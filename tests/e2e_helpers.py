"""Shared pieces of the forwarder's end-to-end tests: the dual-stack topology,
an echo backend, kernel counters of arrivals, the blaster in the background, and STATUS= parsing.

    client 198.51.100.10 2001:db8:1::10 --- 198.51.100.1 2001:db8:1::1 [host: forwarder]
    [host] 192.0.2.1 2001:db8:2::1 --- 192.0.2.2 2001:db8:2::2 backend
"""

import collections
import json
import re
import socket
import sys
import threading
from collections.abc import Callable

from netlab import Lab
from netlab.lab import LabNode, python_env
from netlab.process import Process
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


def _echo_forever(sock: socket.socket) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(65535)
            sock.sendto(b"echo:" + data, peer)
        except OSError:
            return


def start_echo(lab: Lab, address: str, port: int, node: str = "backend") -> None:
    """A UDP echo server in `node`, answering every datagram to its sender until the lab closes."""
    sock = lab[node].udp_socket(address, port)
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
    path = node.lab.workdir / f"{node.name}-{table}-{node.lab.next_serial()}.nft"
    path.write_text(
        f"table inet {table} {{\n"
        "    counter seen { }\n"
        f"    chain {hook} {{\n"
        f"        type filter hook {hook} priority raw; policy accept;\n"
        f'        meta l4proto udp udp dport {port} counter name "seen" {verdict}\n'
        "    }\n"
        "}\n"
    )
    node.check(["nft", "-f", str(path)])

    def seen() -> int:
        output = node.check(["nft", "-j", "list", "counter", "inet", table, "seen"])
        for item in json.loads(output)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise AssertionError(f"no counter in nft output: {output!r}")

    return seen


def start_blaster(node: LabNode, **options: object) -> Process:
    """Run netlab.blaster in `node` in the background (options: src, dst, dport, flows, first_port, size,
    rate, duration, count); read its summary with `blaster_summary`."""
    return node.run(
        [sys.executable, "-m", "netlab.blaster", json.dumps(options)], label="blaster", env=python_env()
    )


def blaster_summary(process: Process, timeout: float = 60.0) -> dict[str, float]:
    """Wait for a blaster to finish and return its JSON summary (sent, seconds, cpu_seconds)."""
    code = process.wait(timeout)
    output = process.output()
    assert code == 0, output
    return dict(json.loads(output.strip().splitlines()[-1]))


STATUS_TOTALS = re.compile(r"since start (\d+) forwarded, (\d+) dropped")
STATUS_DROPS = re.compile(r"dropped \(([^)]*)\)")


def status_totals(status: str) -> tuple[int, int] | None:
    """(forwarded, dropped) since start, from one periodic STATUS= line; None for another kind."""
    match = STATUS_TOTALS.search(status)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


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


def drops_by_reason(statuses: list[str]) -> collections.Counter[str]:
    """The drops of every interval added up by reason (each STATUS= line counts its own interval)."""
    total: collections.Counter[str] = collections.Counter()
    for status in statuses:
        match = STATUS_DROPS.search(status)
        if match:
            for item in match.group(1).split(", "):
                key, _, count = item.rpartition(" ")
                total[key] += int(count)
    return total
