"""The `netlab` command: parses the command line, dispatches to a command group's module (labs, traffic,
scenario, doctor, bench, demo) and turns a NetlabError into one `netlab: ` line and its exit code
(netlab.cli.common lists them)."""

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from netlab.cli import bench, demo, doctor, labs, scenario, topology, traffic
from netlab.cli.common import (
    EX_INTERRUPTED,
    EX_UNAVAILABLE,
    LAB_DEPENDENCIES,
    Parser,
    exit_code_of,
    lab_extra_message,
    missing_lab_dependencies,
)
from netlab.errors import NetlabError

_MAIN_PID = os.getpid()


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    # pyroute2 forks helpers (to open netlink sockets inside a namespace) and ends them with SIGTERM; they
    # inherit this handler, and must die rather than unwind through the CLI as if they were the command.
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def build_parser() -> Parser:
    """The parser of every netlab command, each added by its group's `register`."""
    parser = Parser(prog="netlab", description="A network lab for the transparent UDP forwarder.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for group in (demo, bench, labs, traffic, scenario, doctor, topology):
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one netlab command; return its exit code."""
    global _MAIN_PID
    args = build_parser().parse_args(argv)
    missing = missing_lab_dependencies() if getattr(args, "needs_lab", True) else []
    if missing:  # the commands that build, enter or list labs (pyroute2) or craft packets (scapy)
        print(f"netlab: {lab_extra_message(missing)}", file=sys.stderr)
        return EX_UNAVAILABLE
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print(f"netlab: interrupted{args.after_interrupt}", file=sys.stderr)
        return EX_INTERRUPTED
    except NetlabError as error:
        print(f"netlab: {error}", file=sys.stderr)
        return exit_code_of(error)
    except ModuleNotFoundError as error:  # a dependency that went missing after the check above
        if (error.name or "").partition(".")[0] not in LAB_DEPENDENCIES:
            raise
        print(f"netlab: {lab_extra_message([error.name or ''])}", file=sys.stderr)
        return EX_UNAVAILABLE
