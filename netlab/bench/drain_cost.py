"""`python -m netlab.bench.drain_cost`: what one datagram costs the forwarder's drain, in figures that do not
depend on the machine's load, per send path, flow count and size.

    client (blaster) 198.51.100.10 --- 198.51.100.1 [host: drain_driver] 192.0.2.1 --- 192.0.2.2 backend

The blaster queues COUNT datagrams on the driver's listener first; then the driver drains them through the
forwarder's engine (netlab.programs.drain_driver). With --callgrind each case runs twice under valgrind's
callgrind, with COUNT and 2 x COUNT datagrams: the difference of the two instruction totals over COUNT is
the user-space instructions per datagram (start-up and the flows' first datagrams cancel out). Without it
the driver runs natively and reports its own user and system CPU per datagram (these do depend on load:
take the smallest of several runs).

With --replies it measures relay mode's reply path with --reply-tproxy instead: the host steers the
backend's replies (nftables tproxy) to the driver's one reply socket. One datagram per flow opens the flows
first (the same in every run: it cancels out); then the backend queues COUNT replies spread over the flows'
clients, and the driver reads and relays them (steered_pass: recvmmsg, the machine, sendmmsg per
listener). Each case runs in three stages, so a reply's cost splits into its parts: reading only
(recvmmsg), everything but the sendmmsg system call, and all of it.
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from netlab.bench.lab import (
    BACKEND_ADDRESS,
    HOST_ADDRESS,
    PORT,
    REPLY_SOCKET_PORT,
    SENDER_ADDRESS,
    BenchLab,
    Case,
)
from netlab.lab.lab import Lab
from netlab.lab.process import Process, python_env
from netlab.programs.blaster import FIRST_PORT

DRIVER_CPU = "1"
# The stages of a reply run (netlab.programs.drain_driver): what each adds is one part of a reply's cost.
STAGES = ("receive", "match", "relay")


@dataclass(frozen=True)
class DrainCase:
    """One measurement: a send path, a traffic shape and how many datagrams are queued."""

    send_path: str
    flows: int
    size: int
    replies: bool = False  # relay mode's steered replies (--reply-tproxy) instead of the forward path

    def __str__(self) -> str:
        what = "replies" if self.replies else self.send_path
        return f"{what:<8}{self.flows:>5} flows {self.size:>5} B"


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
        self._steering: contextlib.ExitStack | None = None

    def steer_replies(self) -> None:
        """The host steers the backend's replies to the driver's reply socket (from the first reply run
        on, until the lab closes)."""
        if self._steering is None:
            self._steering = contextlib.ExitStack()
            self.lab.defer(self._steering.close)
            self._steering.enter_context(self.bench.replies_steered())

    def run(self, case: DrainCase, count: int, *, callgrind: bool, stage: str = "relay") -> Drained:
        """Queue `count` datagrams of `case` (replies: after one datagram per flow opened the flows), then
        drain them once in a fresh driver (replies: up to `stage`, one of STAGES)."""
        serial = self.lab.next_serial()
        fifo = self.lab.workdir / f"drain-go-{serial}"
        os.mkfifo(fifo)
        options: dict[str, object] = {
            "listen": [HOST_ADDRESS, PORT],
            "destination": f"{BACKEND_ADDRESS}:{PORT}",
            "send_path": "sockets" if case.send_path == "gso" else case.send_path,
            "gso": case.send_path == "gso",
            "fifo": str(fifo),
            "count": count,
        }
        if case.replies:
            self.steer_replies()
            options |= {
                "send_path": "raw",
                "reply_port": REPLY_SOCKET_PORT,
                "flows": case.flows,
                "stage": stage,
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
        queued = case.flows if case.replies else count
        sent = self.bench.blast(Case(case.size, case.flows), 60.0, count=queued)
        if int(sent["sent"]) != queued:
            raise RuntimeError(f"the blaster sent {sent['sent']} of {queued} datagrams")
        with open(fifo, "w") as go:
            go.write("go")
        if case.replies:
            wait_for_line(process, '"flows"', 300.0)
            self.queue_replies(case, count)
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

    def queue_replies(self, case: DrainCase, count: int) -> None:
        """The backend answers: `count` replies of `case.size` bytes from its port, to the flows' clients
        in turn; the host steers each to the driver's reply socket, where it waits."""
        payload = bytes(case.size)
        with self.bench.backend.udp_socket(BACKEND_ADDRESS, PORT) as backend:
            for index in range(count):
                backend.sendto(payload, (SENDER_ADDRESS, FIRST_PORT + index % case.flows))


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


def instructions_per_datagram(cost: DrainCost, case: DrainCase, count: int, stage: str = "relay") -> float:
    """Two callgrind runs, `count` and 2 x `count` datagrams: the instructions one more datagram costs."""
    small = cost.run(case, count, callgrind=True, stage=stage)
    large = cost.run(case, 2 * count, callgrind=True, stage=stage)
    if small.instructions is None or large.instructions is None or large.forwarded <= small.forwarded:
        raise RuntimeError(f"no difference to measure: {small} and {large}")
    return (large.instructions - small.instructions) / (large.forwarded - small.forwarded)


def cheapest(runs: list[Drained]) -> tuple[float, float]:
    """User and system CPU microseconds per datagram of the cheapest of `runs` (the others were disturbed
    more)."""
    best = min(runs, key=lambda run: (run.user_seconds + run.system_seconds) / run.forwarded)
    return best.user_seconds / best.forwarded * 1e6, best.system_seconds / best.forwarded * 1e6


def cpu_per_datagram(runs: list[Drained]) -> str:
    """The driver's own CPU per datagram in the cheapest of `runs`."""
    user, system = cheapest(runs)
    return f"user {user:5.2f} us + system {system:5.2f} us = {user + system:5.2f} us/datagram"


@dataclass(frozen=True)
class ReplySplit:
    """What one steered reply costs, in three parts: reading it (recvmmsg and the Python around the call),
    the per-reply Python between (its client, its flow, staging it), and sending it (sendmmsg)."""

    receive: float
    python: float
    send: float

    @classmethod
    def of_stages(cls, stages: dict[str, float]) -> "ReplySplit":
        """The parts from what each stage (STAGES: each does more than the one before) cost per reply."""
        return cls(stages["receive"], stages["match"] - stages["receive"], stages["relay"] - stages["match"])

    @property
    def total(self) -> float:
        return self.receive + self.python + self.send


def reply_instructions(cost: DrainCost, case: DrainCase, count: int) -> str:
    """The user-space instructions per steered reply and their split (6 callgrind runs)."""
    split = ReplySplit.of_stages(
        {stage: instructions_per_datagram(cost, case, count, stage) for stage in STAGES}
    )
    return (
        f"{split.total:>9,.0f} instructions/reply = recvmmsg {split.receive:,.0f} + per-reply Python "
        f"{split.python:,.0f} + sendmmsg {split.send:,.0f}"
    )


def reply_cpu(cost: DrainCost, case: DrainCase, count: int, runs: int) -> str:
    """The driver's user and system CPU per steered reply, each part from the cheapest of `runs` runs."""
    users, systems = {}, {}
    for stage in STAGES:
        users[stage], systems[stage] = cheapest(
            [cost.run(case, count, callgrind=False, stage=stage) for _ in range(runs)]
        )
    user, system = ReplySplit.of_stages(users), ReplySplit.of_stages(systems)
    return (
        f"user {user.total:5.2f} us + system {system.total:5.2f} us = {user.total + system.total:5.2f} "
        f"us/reply; user+system: recvmmsg {user.receive:.2f}+{system.receive:.2f}, per-reply Python "
        f"{user.python:.2f}+{system.python:.2f}, sendmmsg {user.send:.2f}+{system.send:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netlab.bench.drain_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--paths",
        default="raw,sockets",
        help="send paths: raw, sockets, gso (sockets with --gso); default raw,sockets",
    )
    parser.add_argument(
        "--replies",
        action="store_true",
        help="measure relay mode's steered replies (--reply-tproxy, raw path) instead of --paths",
    )
    parser.add_argument("--flows", default="1,1000", help="flow counts (default 1,1000)")
    parser.add_argument("--sizes", default="64,1200", help="payload sizes (default 64,1200)")
    parser.add_argument("--count", type=int, default=3000, help="datagrams queued per run (default 3000)")
    parser.add_argument("--callgrind", action="store_true", help="instructions per datagram under callgrind")
    parser.add_argument("--runs", type=int, default=1, help="native runs per case; the fastest is shown")
    parser.add_argument("--workdir", type=Path, help="keep the logs and callgrind files here")
    args = parser.parse_args(argv)
    paths = ["raw"] if args.replies else args.paths.split(",")
    cases = [
        DrainCase(path, int(flows), int(size), replies=args.replies)
        for path in paths
        for flows in args.flows.split(",")
        for size in args.sizes.split(",")
    ]
    with Lab(args.workdir, description="netlab drain cost") as lab:
        cost = DrainCost(lab)
        for case in cases:
            if case.replies and args.callgrind:
                result = reply_instructions(cost, case, args.count)
            elif case.replies:
                result = reply_cpu(cost, case, args.count, args.runs)
            elif args.callgrind:
                result = f"{instructions_per_datagram(cost, case, args.count):>9,.0f} instructions/datagram"
            else:
                result = cpu_per_datagram(
                    [cost.run(case, args.count, callgrind=False) for _ in range(args.runs)]
                )
            print(f"{case}: {result}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
