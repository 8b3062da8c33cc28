"""What every command group of the `netlab` command shares: the exit codes, the argument parser that exits
64 on a usage error, the privilege check and JSON output.

Exit codes (sysexits(3)): 0 success, 1 a check or scenario failed, 64 usage, 66 no such topology or
scenario file, 68 no such lab or node, 69 netlab's dependencies (the `lab` extra) are not installed,
71 a system call failed, 77 missing privilege, 78 an invalid topology or scenario file, 127 the command
given to `exec` does not exist, 130 interrupted. `exec` and `shell` exit with the code of the command
they ran.
"""

import argparse
import importlib.util
import json
import os
import sys
from typing import NoReturn, TypeAlias

from netlab.errors import (
    AddressError,
    FixtureNotFoundError,
    MissingPrivilegeError,
    NetlabError,
    PacketError,
    ScenarioError,
    SystemCallError,
    TopologyError,
    UnknownLabError,
    UnknownNodeError,
    UsageError,
)
from netlab.lab.privileges import missing_reason

EX_FAILED = 1
EX_UNAVAILABLE = 69  # os.EX_UNAVAILABLE: a program netlab needs is missing
# What the `lab` extra brings; a bare `pip install .` is the forwarder's, without them.
LAB_DEPENDENCIES = ("pyroute2", "scapy")
LAB_EXTRA = "pip install 'transparent-udp-forwarder[lab]'"
EX_NOT_FOUND = 127
EX_INTERRUPTED = 130
# Most specific first: UnknownNodeError is a TopologyError.
EXIT_CODES: list[tuple[type[NetlabError], int]] = [
    (UsageError, os.EX_USAGE),
    (AddressError, os.EX_USAGE),
    (PacketError, os.EX_USAGE),
    (FixtureNotFoundError, os.EX_NOINPUT),
    (UnknownLabError, os.EX_NOHOST),
    (UnknownNodeError, os.EX_NOHOST),
    (MissingPrivilegeError, os.EX_NOPERM),
    (TopologyError, os.EX_CONFIG),
    (ScenarioError, os.EX_CONFIG),
    (SystemCallError, os.EX_OSERR),
]


def exit_code_of(error: NetlabError) -> int:
    """The documented exit code for `error` (1 for anything without its own)."""
    return next((code for kind, code in EXIT_CODES if isinstance(error, kind)), EX_FAILED)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one `netlab: ` line and exit 64 (EX_USAGE), not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"netlab: {message}", file=sys.stderr)
        raise SystemExit(os.EX_USAGE)


# The object `add_subparsers` returns, to which each command group adds its commands.
Commands: TypeAlias = "argparse._SubParsersAction[Parser]"


def missing_lab_dependencies() -> list[str]:
    """The packages of the `lab` extra that this Python cannot import."""
    return [name for name in LAB_DEPENDENCIES if importlib.util.find_spec(name) is None]


def lab_extra_message(missing: list[str]) -> str:
    """The one line that says which extra to install."""
    return f"netlab needs {' and '.join(missing)}, which come with the lab extra: {LAB_EXTRA}"


def require_privileges() -> None:
    """Raise MissingPrivilegeError naming the capability this process lacks, if any."""
    reason = missing_reason()
    if reason is not None:
        raise MissingPrivilegeError(reason)


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


# What an interrupted command left behind, for its last line: commands that make their own lab remove it;
# commands working in a lab `netlab up` made leave that lab as it was.
OWN_LAB_REMOVED = "; the lab was removed"
UP_LAB_KEPT = "; the lab made by `netlab up` stays up (`netlab down ID` removes it)"


def add_lab_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", metavar="ID", help="the lab (see `netlab ls`); optional with one lab up")
