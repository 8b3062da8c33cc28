"""`netlab bench`: the forwarder's speed as ratios measured in one run, on one topology.

    client (sender) 198.51.100.10 --- 198.51.100.1 [host: contender] 192.0.2.1 --- 192.0.2.2 backend

Contenders take turns on the host, interleaved and repeated: the kernel's nftables DNAT (with and without
RPS), the C original's per-datagram algorithm in Python (netlab.benchref), and the forwarder. The load comes
from netlab.blaster (raw socket + sendmmsg, pinned to CPU 0); its solo rate is measured and reported.
Delivered datagrams are counted by an nftables counter at the backend (kernel, not a userspace receiver).
"""

import json
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from netlab.activation import ForwarderUnderTest, start_forwarder
from netlab.errors import LabTimeoutError
from netlab.lab import Lab, LabNode, python_env
from netlab.topologies import seed_deployment

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


@dataclass
class Settings:
    """How much to measure: the quick mode is a smoke test of seconds, the full mode gives the figures."""

    cases: list[Case] = field(default_factory=lambda: [Case(64, 1), Case(64, 1000)])
    runs: int = 1
    duration: float = 0.5
    contenders: list[str] = field(default_factory=list)
    loss_tests: bool = False
    memory_flows: int = 0  # measure what this many open flows cost (0: skip)

    @classmethod
    def quick(cls) -> "Settings":
        return cls()

    @classmethod
    def full(cls) -> "Settings":
        cases = [Case(64, 1), Case(64, 1000), Case(1200, 1), Case(1200, 1000)]
        return cls(cases=cases, runs=3, duration=2.0, loss_tests=True, memory_flows=100_000)


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
        path = self.lab.workdir / f"bench-{self.lab.next_serial()}.nft"
        path.write_text(ruleset)
        node.check(["nft", "-f", str(path)])

    def delivered(self) -> int:
        """The backend's kernel counter of benchmark datagrams."""
        output = self.backend.check(["nft", "-j", "list", "counter", "inet", "netlab_bench", "delivered"])
        for item in json.loads(output)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise LabTimeoutError(f"no counter in nft output: {output!r}")

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
            [sys.executable, "-m", "netlab.sysfs", "to-client/queues/rx-0/rps_cpus", value], env=python_env()
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
            [sys.executable, "-m", "netlab.blaster", json.dumps(options)],
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
            self.host.check(["nft", "delete", "table", "inet", "netlab_sink"])
        return float(sent["sent"]) / float(sent["seconds"])


@contextmanager
def kernel_dnat(bench: BenchLab, case: Case) -> Iterator[None]:
    bench.nft(bench.host, HOST_DNAT)
    try:
        yield
    finally:
        bench.host.check(["nft", "delete", "table", "ip", "netlab_dnat"])


@contextmanager
def socket_activated(
    bench: BenchLab, program: list[str] | None, args: list[str], command_prefix: list[str] | None = None
) -> Iterator[ForwarderUnderTest]:
    process = start_forwarder(
        bench.host,
        [f"{HOST_ADDRESS}:{PORT}"],
        [f"{BACKEND_ADDRESS}:{PORT}"],
        args=args,
        program=program,
        command_prefix=command_prefix or (),
    )
    try:
        bench.sender.send_udp(src=SENDER_ADDRESS, dst=HOST_ADDRESS, sport=9999, dport=PORT, payload=b"wake")
        process.wait_ready()
        yield process
    finally:
        process.stop()


def per_datagram_reference(bench: BenchLab, case: Case) -> Any:
    return socket_activated(bench, [sys.executable, "-m", "netlab.benchref"], [])


FORWARDER_ARGS = ["--log-level", "warning", "--receive-buffer", str(4 << 20), "--max-flows", "4096"]


def forwarder(bench: BenchLab, case: Case) -> Any:
    return socket_activated(bench, None, FORWARDER_ARGS)


def forwarder_single(bench: BenchLab, case: Case) -> Any:
    return socket_activated(bench, None, [*FORWARDER_ARGS, "--receive", "single"])


def forwarder_relay(bench: BenchLab, case: Case) -> Any:
    """Relay mode's forward path (connected flow sockets); the bench's backend never answers."""
    return socket_activated(bench, None, [*FORWARDER_ARGS, "--reply", "relay"])


def kib_field(path: str, name: str) -> int:
    """A `Name:   N kB` field of a /proc file, in KiB."""
    with open(path) as handle:
        for line in handle:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise LabTimeoutError(f"no {name} in {path}")


@dataclass
class FlowMemory:
    """What `flows` open flows cost: the forwarder's RSS and the kernel's slab memory (socket structures)."""

    flows: int
    rss_kib_before: int
    rss_kib_after: int
    slab_kib_delta: int

    @property
    def rss_bytes_per_flow(self) -> float:
        return (self.rss_kib_after - self.rss_kib_before) * 1024 / self.flows

    @property
    def kernel_bytes_per_flow(self) -> float:
        return self.slab_kib_delta * 1024 / self.flows


def open_flows(status: str) -> int:
    """The flow count at the end of the forwarder's STATUS= line ('...; N flows.'), 0 when absent."""
    match = re.search(r"; (\d+) flows", status)
    return int(match[1]) if match else 0


def measure_flow_memory(bench: BenchLab, flows: int = 100_000) -> FlowMemory:
    """Open `flows` flows in one forwarder (its cap raised to fit) and read its RSS and the slab growth.

    Each flow is a socket, so RLIMIT_NOFILE bounds the count; without CAP_SYS_RESOURCE the hard limit
    cannot be raised, and the measurement uses as many flows as it allows (the report says how many).
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        flows = min(flows, hard - 1024)
    prefix = ["prlimit", f"--nofile={flows + 1024}:{flows + 1024}", "--"]
    args = [*FORWARDER_ARGS, "--max-flows", str(flows + 16), "--stats-interval", "1"]
    bench.set_rps(False)
    with socket_activated(bench, None, args, command_prefix=prefix) as forwarder:
        status = f"/proc/{forwarder.process.pid}/status"
        rss_before = kib_field(status, "VmRSS")
        slab_before = kib_field("/proc/meminfo", "Slab")
        # Every flow sends a few datagrams, paced well below saturation so that none is lost to overload.
        bench.blast(Case(64, flows), duration=max(2.0, flows / 50_000), rate=50_000)
        bench.settle()
        forwarder.wait_status(lambda value: open_flows(value) >= flows, timeout=20)
        rss_after = kib_field(status, "VmRSS")
        slab_after = kib_field("/proc/meminfo", "Slab")
    return FlowMemory(flows, rss_before, rss_after, slab_after - slab_before)


CONTENDERS = {
    "kernel-dnat+rps": Contender("kernel-dnat+rps", kernel_dnat, rps=True),
    "kernel-dnat": Contender("kernel-dnat", kernel_dnat, rps=False),
    # Userspace contenders run without RPS: the host's receive work then stays on the sender's core and
    # leaves the other core to the forwarding process (RPS would put both on CPU 1).
    "per-datagram": Contender("per-datagram", per_datagram_reference, rps=False),
    "forwarder": Contender("forwarder", forwarder, rps=False),
    "forwarder-single": Contender("forwarder-single", forwarder_single, rps=False),
    "forwarder-relay": Contender("forwarder-relay", forwarder_relay, rps=False),
}
BASELINE = "kernel-dnat+rps"
REFERENCE = "per-datagram"


@dataclass
class Summary:
    """Medians and ranges per case and contender, with the ratios the targets are stated in."""

    contender: str
    case: Case
    median_delivered_per_s: float
    min_delivered_per_s: float
    max_delivered_per_s: float
    median_offered_per_s: float
    median_loss: float
    median_cpu_us_per_datagram: float
    ratio_to_kernel_dnat_rps: float | None = None
    ratio_to_per_datagram: float | None = None


def summarize(runs: list[Run]) -> list[Summary]:
    summaries: list[Summary] = []
    keys = sorted({(run.case.payload, run.case.flows, run.contender) for run in runs if not run.rate_limit})
    for payload, flows, name in keys:
        mine = [r for r in runs if (r.case.payload, r.case.flows, r.contender) == (payload, flows, name)]
        mine = [r for r in mine if not r.rate_limit]
        rates = [r.delivered_per_second for r in mine]
        summaries.append(
            Summary(
                name,
                Case(payload, flows),
                statistics.median(rates),
                min(rates),
                max(rates),
                statistics.median(r.offered_per_second for r in mine),
                statistics.median(r.loss for r in mine),
                statistics.median(r.cpu_us_per_datagram for r in mine),
            )
        )
    for summary in summaries:
        for other in summaries:
            if other.case != summary.case or not other.median_delivered_per_s:
                continue
            ratio = summary.median_delivered_per_s / other.median_delivered_per_s
            if other.contender == BASELINE:
                summary.ratio_to_kernel_dnat_rps = ratio
            if other.contender == REFERENCE:
                summary.ratio_to_per_datagram = ratio
    return summaries


def _k(value: float) -> str:
    return f"{value / 1000:.0f}k"


def format_table(summaries: list[Summary], solo: dict[str, float]) -> str:
    lines = [
        f"{'case':<18} {'contender':<16} {'offered/s':>9} {'delivered/s':>11} {'min-max':>11} {'loss':>7} "
        f"{'CPU us/dg':>9} {'x DNAT+RPS':>10} {'x per-dgram':>11}"
    ]
    for s in summaries:
        ratio_dnat = f"{s.ratio_to_kernel_dnat_rps:.2f}" if s.ratio_to_kernel_dnat_rps is not None else "-"
        ratio_ref = f"{s.ratio_to_per_datagram:.2f}" if s.ratio_to_per_datagram is not None else "-"
        spread = f"{_k(s.min_delivered_per_s)}-{_k(s.max_delivered_per_s)}"
        lines.append(
            f"{s.case!s:<18} {s.contender:<16} {_k(s.median_offered_per_s):>9} "
            f"{_k(s.median_delivered_per_s):>11} {spread:>11} {s.median_loss:>7.2%} "
            f"{s.median_cpu_us_per_datagram:>9.2f} {ratio_dnat:>10} {ratio_ref:>11}"
        )
    lines.append(
        "sender alone (host drops on arrival): " + ", ".join(f"{k} {_k(v)}/s" for k, v in solo.items())
    )
    return "\n".join(lines)


def memory_line(memory: FlowMemory) -> str:
    rss = (memory.rss_kib_after - memory.rss_kib_before) / 1024
    rss_100k = (memory.rss_kib_before * 1024 + 100_000 * memory.rss_bytes_per_flow) / 2**20
    kernel_100k = 100_000 * memory.kernel_bytes_per_flow / 2**20
    return (
        f"{memory.flows} open flows: forwarder RSS {memory.rss_kib_before / 1024:.1f} -> "
        f"{memory.rss_kib_after / 1024:.1f} MiB (+{rss:.1f} MiB, {memory.rss_bytes_per_flow:.0f} B/flow); "
        f"kernel slab +{memory.slab_kib_delta / 1024:.1f} MiB ({memory.kernel_bytes_per_flow:.0f} B/flow); "
        f"at 100000 flows: RSS ~{rss_100k:.0f} MiB, kernel ~{kernel_100k:.0f} MiB"
    )


def run_bench(
    settings: Settings, out: TextIO = sys.stdout, progress: TextIO = sys.stderr, as_json: bool = False
) -> int:
    """Run every contender on every case, interleaved and repeated; print the table (or JSON)."""
    names = settings.contenders or list(CONTENDERS)
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown:
        raise ValueError(f"unknown contender {unknown[0]!r}: expected one of {sorted(CONTENDERS)}")
    runs: list[Run] = []
    loss_runs: list[Run] = []
    total = settings.runs * len(settings.cases) * len(names)
    with Lab(description="netlab bench") as lab:
        bench = BenchLab(lab)
        solo = {str(case): bench.sender_solo_rate(case, settings.duration) for case in settings.cases}
        print(f"sender alone: {', '.join(f'{k} {_k(v)}/s' for k, v in solo.items())}", file=progress)
        done = 0
        for repetition in range(settings.runs):
            for case in settings.cases:
                for name in names:
                    done += 1
                    run = bench.measure(CONTENDERS[name], case, settings.duration)
                    runs.append(run)
                    print(
                        f"[{done}/{total}] run {repetition + 1} {case!s:<17} {name:<16} "
                        f"{_k(run.delivered_per_second)}/s delivered, loss {run.loss:.2%}",
                        file=progress,
                        flush=True,
                    )
        summaries = summarize(runs)
        if settings.loss_tests and "forwarder" in names:
            for summary in summaries:
                if summary.contender != "forwarder" or summary.case.payload != 64:
                    continue
                for rate in (0.8 * summary.median_delivered_per_s, 100_000.0):
                    run = bench.measure(CONTENDERS["forwarder"], summary.case, settings.duration, rate=rate)
                    loss_runs.append(run)
                    print(
                        f"[loss] {summary.case!s:<17} forwarder at {_k(rate)}/s offered: loss {run.loss:.3%} "
                        f"({run.offered - run.delivered} of {run.offered})",
                        file=progress,
                        flush=True,
                    )
        memory = measure_flow_memory(bench, settings.memory_flows) if settings.memory_flows else None
        if memory is not None:
            print(f"[memory] {memory_line(memory)}", file=progress, flush=True)
    if as_json:
        document = {
            "flow_memory": None
            if memory is None
            else asdict(memory)
            | {
                "rss_bytes_per_flow": memory.rss_bytes_per_flow,
                "kernel_bytes_per_flow": memory.kernel_bytes_per_flow,
            },
            "sender_solo_per_s": solo,
            "cases": [asdict(summary) for summary in summaries],
            "loss": [
                {
                    "case": asdict(run.case),
                    "offered_per_s": run.rate_limit,
                    "sent": run.offered,
                    "delivered": run.delivered,
                    "loss": run.loss,
                }
                for run in loss_runs
            ],
            "runs": [asdict(run) | {"delivered_per_s": run.delivered_per_second} for run in runs],
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        print(format_table(summaries, solo), file=out)
        if memory is not None:
            print(memory_line(memory), file=out)
        for run in loss_runs:
            print(
                f"loss at {_k(run.rate_limit)}/s offered, {run.case}: {run.loss:.3%} "
                f"({run.offered - run.delivered} of {run.offered} lost)",
                file=out,
            )
    return 0
