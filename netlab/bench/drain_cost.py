"""`python -m netlab.bench.drain_cost`: what one datagram costs the forwarder's drain, in figures that do not
depend on the machine's load, per send path, flow count and size.

    client (blaster) 198.51.100.10 --- 198.51.100.1 [host: drain_driver] 192.0.2.1 --- 192.0.2.2 backend

The blaster queues COUNT datagrams on the driver's listener first; then the driver drains them through the
forwarder's engine (netlab.programs.drain_driver). With --callgrind each case runs twice under valgrind's
callgrind, with COUNT and 2 x COUNT datagrams: the difference of the two instruction totals over COUNT is
the user-space instructions per datagram (start-up and the flows' first datagrams cancel out). Without it
the driver runs natively and reports its own user and system CPU per datagram (these do depend on load:
take the smallest of several runs).
"""

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from netlab.bench.lab import BACKEND_ADDRESS, HOST_ADDRESS, PORT, BenchLab, Case
from netlab.lab.lab import Lab
from netlab.lab.process import Process, python_env

DRIVER_CPU = "1"


@dataclass(frozen=True)
class DrainCase:
    """One measurement: a send path, a traffic shape and how many datagrams are queued."""

    send_path: str
    flows: int
    size: int


@dataclass
class Drained:
    """What one driver run reported."""

    forwarded: int
    user_seconds: float
    system_seconds: float
    instructions: int | None


class DrainCost:
    """The bench lab and the runs of the driver in its host."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.bench = BenchLab(lab)
        self.bench.set_rps(False)

    def run(self, case: DrainCase, count: int, *, callgrind: bool) -> Drained:
        """Queue `count` datagrams of `case`, then drain them once in a fresh driver."""
        serial = self.lab.next_serial()
        fifo = self.lab.workdir / f"drain-go-{serial}"
        os.mkfifo(fifo)
        options = {
            "listen": [HOST_ADDRESS, PORT],
            "destination": f"{BACKEND_ADDRESS}:{PORT}",
            "send_path": "sockets" if case.send_path == "gso" else case.send_path,
            "gso": case.send_path == "gso",
            "fifo": str(fifo),
            "count": count,
        }
        command = ["taskset", "-c", DRIVER_CPU, sys.executable, "-m", "netlab.programs.drain_driver"]
        output_file: Path | None = None
        if callgrind:
            output_file = self.lab.workdir / f"callgrind-{serial}.out"
            valgrind = shutil.which("valgrind") or "valgrind"
            command[3:3] = [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={output_file}",
                f"--log-file={self.lab.workdir / f'valgrind-{serial}.log'}",
            ]
        process = self.bench.host.run(
            [*command, json.dumps(options)], label="drain", env=python_env({"PYTHONHASHSEED": "0"})
        )
        wait_for_line(process, '"ready"', 300.0)
        sent = self.bench.blast(Case(case.size, case.flows), 60.0, count=count)
        if int(sent["sent"]) != count:
            raise RuntimeError(f"the blaster sent {sent['sent']} of {count} datagrams")
        with open(fifo, "w") as go:
            go.write("go")
        code = process.wait(600.0)
        if code != 0:
            raise RuntimeError(f"drain driver exited {code}: {process.output()}")
        result = json.loads(process.output().strip().splitlines()[-1])
        return Drained(
            int(result["forwarded"]),
            float(result["user_seconds"]),
            float(result["system_seconds"]),
            callgrind_total(output_file) if output_file is not None else None,
        )


def wait_for_line(process: Process, text: str, timeout: float) -> None:
    """Wait until `process` has printed `text` (with a deadline; its log in the error)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in process.output():
            return
        if process.returncode is not None:
            raise RuntimeError(f"drain driver exited {process.returncode}: {process.output()}")
        time.sleep(0.05)  # polling the child's log for its ready line, with a deadline
    raise TimeoutError(f"drain driver did not print {text!r} in {timeout}s")


def callgrind_total(path: Path) -> int:
    """The instruction total (Ir) of a callgrind output file."""
    for line in path.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise ValueError(f"{path}: no totals line")


def instructions_per_datagram(cost: DrainCost, case: DrainCase, count: int) -> str:
    """Two callgrind runs, `count` and 2 x `count` datagrams: the instructions one more datagram costs."""
    small = cost.run(case, count, callgrind=True)
    large = cost.run(case, 2 * count, callgrind=True)
    if small.instructions is None or large.instructions is None or large.forwarded <= small.forwarded:
        raise RuntimeError(f"no difference to measure: {small} and {large}")
    per = (large.instructions - small.instructions) / (large.forwarded - small.forwarded)
    return f"{per:>9,.0f} instructions/datagram (forwarded {small.forwarded}, {large.forwarded})"


def cpu_per_datagram(runs: list[Drained]) -> str:
    """The driver's own CPU per datagram in the cheapest of `runs` (the others were disturbed more)."""
    best = min(runs, key=lambda run: run.user_seconds + run.system_seconds)
    user = best.user_seconds / best.forwarded * 1e6
    system = best.system_seconds / best.forwarded * 1e6
    return f"user {user:5.2f} us + system {system:5.2f} us = {user + system:5.2f} us/datagram"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netlab.bench.drain_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--paths",
        default="raw,sockets",
        help="send paths: raw, sockets, gso (sockets with --gso); default raw,sockets",
    )
    parser.add_argument("--flows", default="1,1000", help="flow counts (default 1,1000)")
    parser.add_argument("--sizes", default="64,1200", help="payload sizes (default 64,1200)")
    parser.add_argument("--count", type=int, default=3000, help="datagrams queued per run (default 3000)")
    parser.add_argument("--callgrind", action="store_true", help="instructions per datagram under callgrind")
    parser.add_argument("--runs", type=int, default=1, help="native runs per case; the fastest is shown")
    parser.add_argument("--workdir", type=Path, help="keep the logs and callgrind files here")
    args = parser.parse_args(argv)
    cases = [
        DrainCase(path, int(flows), int(size))
        for path in args.paths.split(",")
        for flows in args.flows.split(",")
        for size in args.sizes.split(",")
    ]
    with Lab(args.workdir, description="netlab drain cost") as lab:
        cost = DrainCost(lab)
        for case in cases:
            label = f"{case.send_path:<8}{case.flows:>5} flows {case.size:>5} B"
            if args.callgrind:
                print(f"{label}: {instructions_per_datagram(cost, case, args.count)}", flush=True)
            else:
                runs = [cost.run(case, args.count, callgrind=False) for _ in range(args.runs)]
                print(f"{label}: {cpu_per_datagram(runs)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
