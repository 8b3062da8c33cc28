"""The actions the machine hands out for a datagram (the open Flow itself is one) and the events' answers:
open a flow, send once from a local source, drop, close flows.
"""

from dataclasses import dataclass

from forwarder.core.flows import Flow, Path


@dataclass(frozen=True, slots=True)
class OpenFlow:
    """Open a socket for `flow` (bound to its source), send the datagram on it, report flow_opened (or
    open_failed, then send_failed if the send fails)."""

    flow: Flow


@dataclass(frozen=True, slots=True)
class SendOnce:
    """Send the datagram from a one-shot socket bound to `source` (local to this host: never kept)."""

    path: Path
    client: bytes
    source: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Drop:
    """Nothing to send: the datagram (or the backend's reply to `client`) was dropped, and counted, as
    `key`; the engine logs it, rate-limited. `path` is None only for a reply on the tproxy reply socket
    from a source that is none of our backends."""

    key: str
    path: Path | None
    client: bytes | None  # raw sockaddr; None when unknown (a failed receive)
    reply: bool = False


@dataclass(frozen=True, slots=True)
class CloseFlows:
    """Close these flows' sockets: they left the table (evicted, idle, source became local, shutdown)."""

    flows: tuple[Flow, ...]


class ReadHeader:
    """The action "this sender is trusted: give me its datagram" (receive_proxied); one instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "READ_HEADER"


READ_HEADER = ReadHeader()


Action = Flow | OpenFlow | SendOnce | Drop | ReadHeader


ProxiedAction = Flow | OpenFlow | SendOnce | Drop
