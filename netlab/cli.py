"""The `netlab` command: the demo, and housekeeping of labs (list them, remove stale ones).

Exit codes follow sysexits(3): 0 success, 1 a check failed, 64 usage, 77 missing privilege.
"""

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from netlab import registry
from netlab.errors import NetlabError
from netlab.privileges import missing_reason


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"netlab: {message}", file=sys.stderr)
        raise SystemExit(os.EX_USAGE)


def _require_privileges() -> None:
    reason = missing_reason()
    if reason is not None:
        print(f"netlab: {reason}", file=sys.stderr)
        raise SystemExit(os.EX_NOPERM)


_MAIN_PID = os.getpid()


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    # pyroute2 forks helpers (to open netlink sockets inside a namespace) and ends them with SIGTERM; they
    # inherit this handler, and must die rather than unwind through the CLI as if they were the command.
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def cmd_demo(args: argparse.Namespace) -> int:
    from netlab.demo import run_demo  # imports pyroute2 only when needed

    _require_privileges()
    return run_demo()


def cmd_bench(args: argparse.Namespace) -> int:
    from netlab.bench import CONTENDERS, Settings, run_bench

    _require_privileges()
    settings = Settings.full() if args.full else Settings.quick()
    if args.runs is not None:
        settings.runs = args.runs
    if args.duration is not None:
        settings.duration = args.duration
    settings.contenders = args.contender or list(CONTENDERS)
    return run_bench(settings, as_json=args.json)


def cmd_doctor(args: argparse.Namespace) -> int:
    from netlab.doctor import Deployment, MachineProbe, diagnose, format_findings

    if not args.machine:
        print("netlab doctor: give --machine (checking this machine's own namespace)", file=sys.stderr)
        return os.EX_USAGE
    deployment = Deployment(
        host=MachineProbe(),
        backend=None,
        backend_address=args.backend,
        host_address=args.address,
        clients=args.client or [],
    )
    findings = diagnose(deployment)
    print(format_findings(findings))
    return 0 if all(finding.ok for finding in findings) else 1


def cmd_ls(args: argparse.Namespace) -> int:
    for record in registry.load_records():
        state = "live" if record.owner_alive() else "stale"
        print(f"{record.lab_id}  {state:<5}  pid {record.owner_pid:<7} {' '.join(record.namespaces)}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _require_privileges()
    if args.stale:
        removed = registry.reap_stale()
        print(f"removed {len(removed)} stale namespaces" + (f": {' '.join(removed)}" if removed else ""))
        return 0
    parser_error = "netlab down: give --stale"
    print(parser_error, file=sys.stderr)
    return os.EX_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="netlab", description="A network lab for the transparent UDP forwarder.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    demo = commands.add_parser("demo", help="run the seed deployment end to end and show what happened")
    demo.set_defaults(handler=cmd_demo)
    bench = commands.add_parser("bench", help="measure the forwarder against kernel DNAT and the C algorithm")
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a smoke run of seconds (the default)")
    mode.add_argument("--full", action="store_true", help="4 cases x 3 interleaved runs, plus loss tests")
    bench.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    bench.add_argument("--runs", type=int, help="repetitions of every case and contender")
    bench.add_argument("--duration", type=float, help="seconds of traffic per run")
    bench.add_argument(
        "--contender",
        action="append",
        choices=["kernel-dnat+rps", "kernel-dnat", "per-datagram", "forwarder", "forwarder-single"],
        help="measure only these (repeatable); default all",
    )
    bench.set_defaults(handler=cmd_bench)
    doctor = commands.add_parser("doctor", help="check what a transparent forward and its replies need")
    doctor.add_argument("--machine", action="store_true", help="check this machine (its own namespace)")
    doctor.add_argument("--backend", required=True, metavar="ADDRESS", help="the backend's address")
    doctor.add_argument("--address", required=True, metavar="ADDRESS", help="the address clients send to")
    doctor.add_argument("--client", action="append", metavar="ADDRESS", help="a client address (repeatable)")
    doctor.set_defaults(handler=cmd_doctor)
    ls = commands.add_parser("ls", help="list labs on this machine")
    ls.set_defaults(handler=cmd_ls)
    down = commands.add_parser("down", help="remove labs")
    down.add_argument("--stale", action="store_true", help="remove labs whose owner process is gone")
    down.set_defaults(handler=cmd_down)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global _MAIN_PID
    args = build_parser().parse_args(argv)
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("netlab: interrupted; the lab was removed", file=sys.stderr)
        return 130
    except NetlabError as error:
        print(f"netlab: {error}", file=sys.stderr)
        return 1
