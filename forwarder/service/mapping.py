"""Which destination serves which listening socket: by position (`DEST...`, like the C original), or by
the socket's FileDescriptorName= (`NAME=DEST...`, in any order). The two forms do not mix: a command line
is either all positional or all named, so no destination's meaning depends on the others.
"""

from collections.abc import Iterable, Sequence

from forwarder.core.destination import DestinationSpec
from forwarder.errors import ConfigurationError, UsageError, shown


def check_form(specs: Sequence[DestinationSpec]) -> None:
    """Refuse a command line mixing positional and named destinations, or naming a socket twice."""
    named = [spec for spec in specs if spec.fd_name is not None]
    if named and len(named) != len(specs):
        positional = next(spec for spec in specs if spec.fd_name is None)
        raise UsageError(
            f"destination {shown(positional.text)} has no NAME= but {shown(named[0].text)} has: "
            "expected all destinations positional (DEST...) or all named (NAME=DEST...)"
        )
    repeated = duplicates(spec.fd_name for spec in named if spec.fd_name is not None)
    if repeated:
        raise UsageError(f"socket name {shown(repeated[0])} is given more than one destination")


def assign(socket_names: Sequence[str], specs: Sequence[DestinationSpec]) -> list[DestinationSpec]:
    """The destination of each socket, in socket order; `socket_names` are their LISTEN_FDNAMES."""
    check_form(specs)
    if not specs or specs[0].fd_name is None:
        if len(socket_names) != len(specs):
            raise ConfigurationError(
                f"received {len(socket_names)} sockets but {len(specs)} destinations were given: "
                "expected one destination per socket"
            )
        return list(specs)
    repeated = duplicates(socket_names)
    if repeated:
        raise ConfigurationError(
            f"socket name {shown(repeated[0])} is used by more than one socket (LISTEN_FDNAMES), so "
            "NAME=DEST cannot tell them apart: give each socket its own FileDescriptorName= or use "
            "positional DESTs"
        )
    by_name = {spec.fd_name: spec for spec in specs}
    unknown = [name for name in by_name if name is not None and name not in socket_names]
    if unknown:
        names = ", ".join(shown(name) for name in socket_names[:8]) + (
            ", ..." if len(socket_names) > 8 else ""
        )
        raise ConfigurationError(
            f"no socket is named {shown(unknown[0])}: the sockets are named {names} (FileDescriptorName=)"
        )
    missing = [name for name in socket_names if name not in by_name]
    if "" in missing:  # `=DEST` is no way to name it: an empty NAME is refused
        position = socket_names.index("") + 1
        raise ConfigurationError(
            f"socket {position} of {len(socket_names)} has an empty name in LISTEN_FDNAMES, so NAME=DEST "
            "cannot name it: give it a FileDescriptorName= or use positional DESTs"
        )
    if missing:
        raise ConfigurationError(f"socket {shown(missing[0])} has no destination: expected {missing[0]}=DEST")
    return [by_name[name] for name in socket_names]


def duplicates(names: Iterable[str]) -> list[str]:
    """The names that occur more than once, in order of their second occurrence."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated
