"""The benchmark's lab and what one measurement is: a sender, the host where a contender forwards, and a
backend whose nftables counter counts what was delivered.

    client (sender) 198.51.100.10 --- 198.51.100.1 [host: contender] 192.0.2.1 --- 192.0.2.2 backend
"""

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netlab.lab.lab import Lab
from netlab.lab.nft import apply_ruleset, counter_packets, delete_table
from netlab.lab.node import LabNode
from netlab.lab.process import python_env
from netlab.topology.shipped import seed_deployment

SENDER_ADDRESS = "198.51.100.10"
HOST_ADDRESS = "198.51.100.1"
BACKEND_ADDRESS = "192.0.2.2"
PORT = 27000
SENDER_CPU = 0
RPS_MASK = "2"  # the host's receive work goes to CPU 1 while the sender runs on CPU 0

BACKEND_COUNTER = f"""table inet netlab_bench {{
    counter delivered {{ }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        meta l4proto udp udp dport {PORT} counter name "delivered" drop
    }}
}}
"""
HOST_DNAT = f"""table ip netlab_dnat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {HOST_ADDRESS} udp dport {PORT} dnat to {BACKEND_ADDRESS}:{PORT}
    }}
}}
"""
HOST_SINK = f"""table inet netlab_sink {{
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        meta l4proto udp udp dport {PORT} counter drop
    }}
}}
"""


@dataclass(frozen=True)
class Case:
    """One traffic shape: payload size in bytes and number of concurrent flows (source ports)."""

    payload: int
    flows: int

    def __str__(self) -> str:
        return f"{self.payload} B x {self.flows} flow{'s' if self.flows > 1 else ''}"


@dataclass
class Run:
    """One measured run of one contender on one case."""

    contender: str
    case: Case
    offered: int
    delivered: int
    seconds: float
    busy_cpu_seconds: float
    rate_limit: float = 0.0

    @property
    def delivered_per_second(self) -> float:
        return self.delivered / self.seconds

    @property
    def offered_per_second(self) -> float:
        return self.offered / self.seconds

    @property
    def loss(self) -> float:
        return max(0.0, 1 - self.delivered / self.offered) if self.offered else 0.0

    @property
    def cpu_us_per_datagram(self) -> float:
        return self.busy_cpu_seconds / self.delivered * 1e6 if self.delivered else float("nan")


@dataclass
class Contender:
    """A way to forward on the host: a context manager that sets it up, lets traffic run, tears it down."""

    name: str
    setup: Callable[["BenchLab", Case], Any]
    rps: bool = True


def busy_cpu_seconds() -> float:
    """CPU time all cores spent not idle since boot (from /proc/stat), in seconds."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / 100.0  # USER_HZ is 100 on Linux


class BenchLab:
    """The benchmark's lab: topology, counters, sender, and the knobs contenders turn."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        lab.build(seed_deployment())
        self.sender: LabNode = lab["client"]
        self.host: LabNode = lab["host"]
        self.backend: LabNode = lab["backend"]
        self.nft(self.backend, BACKEND_COUNTER)

    def nft(self, node: LabNode, ruleset: str) -> None:
        apply_ruleset(node, ruleset, label="bench")

    def delivered(self) -> int:
        """The backend's kernel counter of benchmark datagrams."""
        return counter_packets(self.backend, "inet", "netlab_bench", "delivered")

    def settle(self, timeout: float = 5.0) -> int:
        """Wait until datagrams in flight have arrived: the counter stops moving (with a deadline)."""
        deadline = time.monotonic() + timeout
        last = self.delivered()
        while time.monotonic() < deadline:
            time.sleep(0.05)  # sampling interval of a measurement, not a wait for an event
            now = self.delivered()
            if now == last:
                return now
            last = now
        return last

    def set_rps(self, enabled: bool) -> None:
        value = RPS_MASK if enabled else "0"
        self.host.check(
            [sys.executable, "-m", "netlab.programs.sysfs", "to-client/queues/rx-0/rps_cpus", value],
            env=python_env(),
        )

    def blast(self, case: Case, duration: float, rate: float = 0.0) -> dict[str, float]:
        options = {
            "src": SENDER_ADDRESS,
            "dst": HOST_ADDRESS,
            "dport": PORT,
            "flows": case.flows,
            "size": case.payload,
            "duration": duration,
            "rate": rate,
            "cpu": SENDER_CPU,
        }
        output = self.sender.check(
            [sys.executable, "-m", "netlab.programs.blaster", json.dumps(options)],
            env=python_env(),
            timeout=duration + 30,
        )
        return dict(json.loads(output.strip().splitlines()[-1]))

    def measure(self, contender: Contender, case: Case, duration: float, rate: float = 0.0) -> Run:
        """Set the contender up, warm it up, then send for `duration` and count what arrived."""
        self.set_rps(contender.rps)
        with contender.setup(self, case):
            self.blast(case, 0.1, rate=20000)  # warm-up: activation, caches, conntrack entries
            self.settle()
            before = self.delivered()
            cpu_before = busy_cpu_seconds()
            sent = self.blast(case, duration, rate)
            after = self.settle()
            cpu = busy_cpu_seconds() - cpu_before
        return Run(contender.name, case, int(sent["sent"]), after - before, float(sent["seconds"]), cpu, rate)

    def sender_solo_rate(self, case: Case, duration: float) -> float:
        """How fast the sender alone can go: the host drops everything on arrival."""
        self.set_rps(True)
        self.nft(self.host, HOST_SINK)
        try:
            sent = self.blast(case, duration)
        finally:
            delete_table(self.host, "inet", "netlab_sink")
        return float(sent["sent"]) / float(sent["seconds"])
