"""Errors of the forwarder; each kind carries the sysexits(3) code the command line exits with.

Messages name the offending value with !r and say what was expected, so one line is enough to fix it.
"""

import os

# Values longer than this are cut in messages: a 5000-digit LISTEN_FDS must not fill the journal.
SHOWN_LENGTH = 60


def shown(value: str, limit: int = SHOWN_LENGTH) -> str:
    """`value` as messages quote it: its repr, cut after `limit` characters with the full length named."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


class ForwarderError(Exception):
    """The forwarder cannot run as configured."""

    exit_code: int = 70  # EX_SOFTWARE: only for errors that have no better class


class UsageError(ForwarderError):
    """The command line is wrong."""

    exit_code = os.EX_USAGE  # 64


class UnknownHostError(ForwarderError):
    """A destination host name does not resolve."""

    exit_code = os.EX_NOHOST  # 68


class OperatingSystemError(ForwarderError):
    """A system call failed while setting up."""

    exit_code = os.EX_OSERR  # 71


class MissingPermissionError(ForwarderError):
    """The forwarder lacks a capability it needs (CAP_NET_RAW or CAP_NET_ADMIN, named in the message)."""

    exit_code = os.EX_NOPERM  # 77


class ConfigurationError(ForwarderError):
    """What systemd handed over (sockets, environment) does not fit the command line."""

    exit_code = os.EX_CONFIG  # 78
