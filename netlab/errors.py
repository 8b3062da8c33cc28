"""Errors of netlab: one base with kinds that name the offending value and what was expected. Every error
netlab raises is one of these (a kind may also be the built-in error it refines, e.g. ValueError), and the
`netlab` command maps each kind to its exit code (netlab.cli.common)."""


class NetlabError(Exception):
    """Base of every error netlab raises on purpose."""


class TopologyError(NetlabError):
    """A topology is invalid: unknown node, bad address, name too long, duplicate, ..."""


class FixtureNotFoundError(NetlabError):
    """A named fixture file (topology, scenario, ...) does not exist."""


class MissingPrivilegeError(NetlabError):
    """The process lacks a capability the lab needs (CAP_NET_ADMIN, CAP_SYS_ADMIN)."""


class LabTimeoutError(NetlabError):
    """Something the lab waited for did not happen before its deadline."""


class ProcessFailedError(NetlabError):
    """A process the lab started exited when it should not have, or with the wrong code."""


class CommandNotFoundError(ProcessFailedError, FileNotFoundError):
    """A program the lab was asked to start does not exist (or is not executable)."""


class SystemCallError(NetlabError, OSError):
    """A system call the lab made failed (setns, bind, mount, ...); errno and the call are in the message."""


class PacketError(NetlabError, ValueError):
    """A datagram that cannot be made as asked: a payload too large for UDP, a port out of range, a
    source of the other family than the destination, a negative fragment size, a count below 1."""


class ExpectationError(NetlabError, AssertionError):
    """What arrived differs from what a test expected; the message shows both side by side."""


class ImpairmentUnavailableError(NetlabError):
    """The kernel cannot emulate the asked-for impairment (e.g. delay needs sch_netem)."""


class UnknownNodeError(TopologyError):
    """A node name that the lab or topology does not have; the message lists the nodes it has."""


class UnknownLabError(NetlabError):
    """A lab id that is not in the registry (or no lab is up); the message lists the labs that exist."""


class ScenarioError(NetlabError):
    """A scenario file is invalid: the message names the file, the element and the bad value."""


class AddressError(NetlabError, ValueError):
    """An address, port or ADDRESS:PORT that does not parse; the message names it and the syntax expected."""


class UsageError(NetlabError):
    """A command was called wrongly (a missing or contradictory option); the message says what to give."""
