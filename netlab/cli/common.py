"""What every command group of the `netlab` command shares: the exit codes, the argument parser that exits
64 on a usage error, the privilege check and JSON output.

Exit codes (sysexits(3)): 0 success, 1 a check or scenario failed, 64 usage, 66 no such topology or
scenario file, 68 no such lab or node, 77 missing privilege, 78 an invalid topology or scenario file,
127 the command given to `exec` does not exist, 130 interrupted. `exec` and `shell` exit with the code of
the command they ran.
"""

import argparse
import json
import os
import sys
from typing import NoReturn, TypeAlias

from netlab.errors import (
    AddressError,
    FixtureNotFoundError,
    MissingPrivilegeError,
    NetlabError,
    ScenarioError,
    TopologyError,
    UnknownLabError,
    UnknownNodeError,
    UsageError,
)
from netlab.lab.privileges import missing_reason

EX_FAILED = 1
EX_NOT_FOUND = 127
EX_INTERRUPTED = 130
# Most specific first: UnknownNodeError is a TopologyError.
EXIT_CODES: list[tuple[type[NetlabError], int]] = [
    (UsageError, os.EX_USAGE),
    (AddressError, os.EX_USAGE),
    (FixtureNotFoundError, os.EX_NOINPUT),
    (UnknownLabError, os.EX_NOHOST),
    (UnknownNodeError, os.EX_NOHOST),
    (MissingPrivilegeError, os.EX_NOPERM),
    (TopologyError, os.EX_CONFIG),
    (ScenarioError, os.EX_CONFIG),
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


def require_privileges() -> None:
    """Raise MissingPrivilegeError naming the capability this process lacks, if any."""
    reason = missing_reason()
    if reason is not None:
        raise MissingPrivilegeError(reason)


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def add_lab_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", metavar="ID", help="the lab (see `netlab ls`); optional with one lab up")
