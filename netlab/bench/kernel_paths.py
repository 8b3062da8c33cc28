"""`python -m netlab.bench.kernel_paths`: what each kernel send path costs the forwarder, measured in the
bench's lab, interleaved and repeated in one run, so the figures are ratios of one moment of the machine.

    client (blaster) 198.51.100.10 --- 198.51.100.1 [host: strategy] 192.0.2.1 --- 192.0.2.2 backend

Send strategies (netlab.programs.send_paths, in the host, pinned to CPU 1, generating their own load from
per-flow transparent sockets bound to client addresses, 64-datagram batches):
  1 flow:     sendto per datagram | sendmmsg of 64 | GSO (one UDP_SEGMENT sendmsg of 64), once with the
              super-packet crossing the veth whole and once segmented in software at the host's egress
  1000 flows: sendto per datagram | io_uring (64 IORING_OP_SENDMSG, one enter) | raw IP_HDRINCL sendmmsg
Relay (GRO in, GSO out): the blaster sends one flow (with UDP checksums) to a minimal relay in the host,
with the host's ingress veth in three GRO set-ups, and we see whether trains form.

Delivered datagrams are counted at the backend's prerouting by an nftables counter. A counter counts
socket buffers, and a GSO super-packet that crosses the veth unsegmented is one of them, so the count is
taken from bytes: delivered = (bytes - 28 x packets) / payload (exact for equal payloads, right for
ordinary packets too). CPU is the sending process's own (user + system) per delivered datagram.
"""

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from netlab.bench.lab import BACKEND_ADDRESS, HOST_ADDRESS, PORT, SENDER_ADDRESS, BenchLab, Case
from netlab.lab.lab import Lab
from netlab.lab.nft import counter_values
from netlab.lab.offload import set_features
from netlab.lab.process import python_env

STRATEGY_CPU = 1
HEADERS = 28  # IPv4 + UDP


@dataclass(frozen=True)
class Strategy:
    """One way of sending: the program's strategy name, the flows, and how the host's veths are set."""

    label: str
    program: str
    flows: int
    segment_on_host: bool = False  # tx-udp-segmentation off on the host's backend veth


SEND_STRATEGIES = [
    Strategy("sendto", "sendto", 1),
    Strategy("sendmmsg", "sendmmsg", 1),
    Strategy("gso", "gso", 1),
    Strategy("gso+sw-seg", "gso", 1, segment_on_host=True),
    Strategy("sendto", "sendto", 1000),
    Strategy("uring", "uring", 1000),
    Strategy("raw-hdrincl", "raw", 1000),
]


@dataclass(frozen=True)
class GroSetup:
    """How the host's ingress veth (to-client) receives: GRO features and threaded NAPI."""

    label: str
    features: dict[str, bool] = field(default_factory=dict)
    threaded: bool = False


GRO_OFF = {"rx-gro": False, "rx-udp-gro-forwarding": False}
GRO_ON = {"rx-gro": True, "rx-udp-gro-forwarding": True}
GRO_SETUPS = [
    GroSetup("veth GRO off", GRO_OFF),
    GroSetup("veth GRO on", GRO_ON),
    GroSetup("veth GRO on, threaded NAPI", GRO_ON, threaded=True),
]


@dataclass
class Measured:
    """One run: what the backend's counter saw and what the sending process spent."""

    label: str
    flows: int
    sent: int
    packets: int
    delivered: int
    seconds: float
    cpu_seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.delivered * 1e6 if self.delivered else float("nan")


def delivered_datagrams(packets: int, octets: int, payload: int) -> int:
    """Datagrams behind a counter's packets and bytes, all of `payload` bytes: right for ordinary packets
    and for GSO super-packets (one set of headers, many payloads) alike."""
    return (octets - HEADERS * packets) // payload if payload else packets


class KernelPaths:
    """The bench lab plus the knobs and counters these measurements use."""

    def __init__(self, lab: Lab, payload: int) -> None:
        self.bench = BenchLab(lab)
        self.payload = payload

    def counter(self) -> tuple[int, int]:
        return counter_values(self.bench.backend, "inet", "netlab_bench", "delivered")

    @contextmanager
    def features(self, ifname: str, wanted: dict[str, bool]) -> Iterator[None]:
        previous = set_features(self.bench.host, ifname, wanted)
        try:
            yield
        finally:
            set_features(self.bench.host, ifname, previous)

    def threaded_napi(self, enabled: bool) -> None:
        self.bench.host.check(
            [sys.executable, "-m", "netlab.programs.sysfs", "to-client/threaded", "1" if enabled else "0"],
            env=python_env(),
        )

    def _program(self, options: dict[str, Any]) -> list[str]:
        return [sys.executable, "-m", "netlab.programs.send_paths", json.dumps(options)]

    def send(self, strategy: Strategy, duration: float) -> Measured:
        """Run one send strategy for `duration` and count what the backend got."""
        options = {
            "strategy": strategy.program,
            "src": SENDER_ADDRESS,
            "dst": BACKEND_ADDRESS,
            "dport": PORT,
            "flows": strategy.flows,
            "size": self.payload,
            "duration": duration,
            "cpu": STRATEGY_CPU,
        }
        with self.features("to-backend", {"tx-udp-segmentation": not strategy.segment_on_host}):
            packets0, octets0 = self.counter()
            output = self.bench.host.check(self._program(options), timeout=duration + 60, label="send-paths")
            self.bench.settle(Case(self.payload, 1))  # forward-only: the backend counter
            packets1, octets1 = self.counter()
        result = json.loads(output.strip().splitlines()[-1])
        packets = packets1 - packets0
        return Measured(
            strategy.label,
            strategy.flows,
            int(result["sent"]),
            packets,
            delivered_datagrams(packets, octets1 - octets0, self.payload),
            float(result["seconds"]),
            float(result["cpu_seconds"]),
        )

    def relay(self, setup: GroSetup, gso: bool, duration: float) -> Measured:
        """The blaster sends one flow to a minimal relay (UDP_GRO in, GSO out when `gso`) in the host."""
        options = {
            "strategy": "relay",
            "src": SENDER_ADDRESS,
            "dst": BACKEND_ADDRESS,
            "dport": PORT,
            "duration": duration,
            "cpu": STRATEGY_CPU,
            "listen": f"{HOST_ADDRESS}:{PORT}",
            "gro": True,
            "gso": gso,
        }
        label = f"relay GRO{'+GSO' if gso else ''}, {setup.label}"
        with self.features("to-client", setup.features):
            if setup.threaded:  # only a veth with NAPI on (GRO) has the knob
                self.threaded_napi(True)
            try:
                process = self.bench.host.run(self._program(options), label="relay", env=python_env())
                process_ready(process)
                self.bench.sender.send_udp(
                    src=SENDER_ADDRESS, dst=HOST_ADDRESS, sport=9999, dport=PORT, payload=b"go"
                )
                packets0, octets0 = self.counter()
                blast = self.blast(duration)
                process.wait(duration + 30)
                self.bench.settle(Case(self.payload, 1))  # forward-only: the backend counter
                packets1, octets1 = self.counter()
            finally:
                if setup.threaded:
                    self.threaded_napi(False)
        result = json.loads(process.output().strip().splitlines()[-1])
        packets = packets1 - packets0
        buffers = max(1.0, float(result["buffers"]))
        return Measured(
            label,
            1,
            int(blast["sent"]),
            packets,
            delivered_datagrams(packets, octets1 - octets0, self.payload),
            float(result["seconds"]),
            float(result["cpu_seconds"]),
            {
                "offered": float(blast["sent"]),
                "received": float(result["sent"]),
                "mean_train": float(result["sent"]) / buffers,
                "share_in_trains": float(result["trains"]) / buffers,
            },
        )

    def blast(self, duration: float) -> dict[str, float]:
        options = {
            "src": SENDER_ADDRESS,
            "dst": HOST_ADDRESS,
            "dport": PORT,
            "flows": 1,
            "size": self.payload,
            "duration": duration,
            "cpu": 0,
        }
        output = self.bench.sender.check(
            [sys.executable, "-m", "netlab.programs.blaster", json.dumps(options)],
            env=python_env(),
            timeout=duration + 30,
        )
        return dict(json.loads(output.strip().splitlines()[-1]))


def process_ready(process: Any, timeout: float = 30.0) -> None:
    """Wait for the relay's {"ready": true} line (it has bound its socket)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if '"ready"' in process.output():
            return
        if process.returncode is not None:
            raise RuntimeError(f"relay exited {process.returncode}: {process.output()}")
        time.sleep(0.02)  # polling the child's log for its ready line, with a deadline
    raise TimeoutError("relay did not get ready")


def median_by_label(runs: list[Measured]) -> list[tuple[str, int, float, float, float, int]]:
    """(label, flows, median datagrams/s, median CPU us/datagram, median packets/datagram, n) per label."""
    groups: dict[tuple[str, int], list[Measured]] = {}
    for run in runs:
        groups.setdefault((run.label, run.flows), []).append(run)
    rows = []
    for (label, flows), group in groups.items():
        rows.append(
            (
                label,
                flows,
                statistics.median(r.per_second for r in group),
                statistics.median(r.cpu_us for r in group),
                statistics.median(r.packets / r.delivered if r.delivered else 0.0 for r in group),
                len(group),
            )
        )
    return rows


def report(send_runs: list[Measured], relay_runs: list[Measured]) -> str:
    lines = ["send strategies (medians; ratio to sendto of the same flow count):"]
    rows = median_by_label(send_runs)
    base = {flows: rate for label, flows, rate, *_ in rows if label == "sendto"}
    base_cpu = {flows: cpu for label, flows, _rate, cpu, *_ in rows if label == "sendto"}
    lines.append(
        f"  {'strategy':<14}{'flows':>6}{'delivered/s':>13}{'ratio':>7}{'CPU us/dg':>11}{'ratio':>7}"
        f"{'counter pkts/dg':>17}"
    )
    for label, flows, rate, cpu, packets_per, _n in rows:
        lines.append(
            f"  {label:<14}{flows:>6}{rate:>13,.0f}{rate / base[flows]:>7.2f}{cpu:>11.2f}"
            f"{cpu / base_cpu[flows]:>7.2f}{packets_per:>17.3f}"
        )
    if relay_runs:
        lines.append("relay, 1 flow from the blaster (UDP checksums on), medians:")
        groups: dict[str, list[Measured]] = {}
        for run in relay_runs:
            groups.setdefault(run.label, []).append(run)
        for label, group in groups.items():
            offered = statistics.median(r.extra["offered"] / r.seconds for r in group)
            lines.append(
                f"  {label:<44} offered {offered:>9,.0f}/s"
                f"  delivered {statistics.median(r.per_second for r in group):>9,.0f}/s"
                f"  CPU {statistics.median(r.cpu_us for r in group):5.2f} us/dg"
                f"  mean train {statistics.median(r.extra['mean_train'] for r in group):5.2f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netlab.bench.kernel_paths", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions, interleaved (default 3)")
    parser.add_argument("--size", type=int, default=64, help="payload bytes (default 64)")
    parser.add_argument("--no-relay", action="store_true", help="skip the GRO relay measurements")
    parser.add_argument("--json", action="store_true", help="print every run as JSON")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.runs < 1 or not 1 <= args.size <= 1400:
        print(
            f"bad settings: duration {args.duration!r} (> 0), runs {args.runs!r} (>= 1), "
            f"size {args.size!r} (1..1400) expected",
            file=sys.stderr,
        )
        return 64
    send_runs: list[Measured] = []
    relay_runs: list[Measured] = []
    with Lab(description="netlab kernel paths") as lab:
        paths = KernelPaths(lab, args.size)
        paths.bench.set_rps(False)
        for repetition in range(args.runs):
            for strategy in SEND_STRATEGIES:
                run = paths.send(strategy, args.duration)
                send_runs.append(run)
                print(
                    f"[{repetition + 1}] {strategy.label:<12} {strategy.flows:>5} flows: "
                    f"{run.per_second:>10,.0f}/s, {run.cpu_us:.2f} us/dg, counter packets {run.packets}",
                    file=sys.stderr,
                    flush=True,
                )
            if not args.no_relay:
                for setup in GRO_SETUPS:
                    for gso in (False, True):
                        run = paths.relay(setup, gso, args.duration)
                        relay_runs.append(run)
                        print(
                            f"[{repetition + 1}] {run.label}: {run.per_second:,.0f}/s, "
                            f"{run.cpu_us:.2f} us/dg, mean train {run.extra['mean_train']:.2f}",
                            file=sys.stderr,
                            flush=True,
                        )
    if args.json:
        print(json.dumps([run.__dict__ for run in send_runs + relay_runs], indent=2))
    else:
        print(report(send_runs, relay_runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
