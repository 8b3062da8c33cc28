"""The one home of the source policy: for a client, a single verdict (forward from a socket bound to its
address, send once from a local address, name it in a PROXY header, or drop with a reason), asked when its
first datagram arrives and again at every idle sweep; and what the PROXY header of a flow says.
"""

import enum
import errno
import socket
from collections.abc import Callable, Iterable
from typing import Protocol

from forwarder.core.addresses import LIMITED_BROADCAST, SockAddr, family_of, plain_address
from forwarder.core.counters import DropReason
from forwarder.core.flows import Flow, Path, bounded_put
from forwarder.core.proxy_protocol import build
from forwarder.core.ranges import Backends

# The headers a --send-proxy-protocol flow keeps for the listeners and host addresses its clients used.
FLOW_HEADERS = 16


def presentable_source(
    client: SockAddr,
    destination_family: socket.AddressFamily,
    is_broadcast: Callable[[str], bool] | None = None,
) -> tuple[str, int] | DropReason:
    """The (address, port) to bind to so the backend sees `client`, or why that cannot be done.

    A v4-mapped IPv6 client (from a dual-stack listener) is presented as plain IPv4 to an IPv4 backend.
    Source port 0 is legal on the wire but cannot be bound (the kernel would pick another port). The
    unspecified address, broadcast and multicast addresses can be bound, but then the kernel picks the
    source (the host's own address): they are dropped before any bind. `is_broadcast` tells whether an IPv4
    address is the directed broadcast of one of the host's subnets (the limited broadcast always is).
    """
    if int(client[1]) == 0:
        return DropReason.ZERO_PORT
    address = plain_address(str(client[0]))
    wanted = 4 if destination_family == socket.AF_INET else 6
    if address.version != wanted:
        return DropReason.FAMILY_MISMATCH
    if address.is_unspecified:
        return DropReason.UNSPECIFIED_SOURCE
    if address.is_multicast:
        return DropReason.MULTICAST_SOURCE
    if address == LIMITED_BROADCAST or (address.version == 4 and is_broadcast and is_broadcast(str(address))):
        return DropReason.BROADCAST_SOURCE
    if address.is_loopback:
        return DropReason.LOOPBACK_SOURCE
    if address.version == 6 and address.is_link_local:  # valid on the client's link only, not the backend's
        return DropReason.LINK_LOCAL_SOURCE
    return (str(address), int(client[1]))


class LocalProbe(Protocol):
    """Answers "is this address one of this host's?"; `forget` drops cached answers (addresses change)."""

    def __call__(self, address: str) -> bool: ...

    def forget(self) -> None: ...


# Sources that cannot be bound (so the transparent modes drop them) but can be named in a header.
_NAMEABLE = (DropReason.LOOPBACK_SOURCE, DropReason.LINK_LOCAL_SOURCE)


def proxy_header(
    source: tuple[str, int],
    local: bytes | None,
    path: Path,
    source_toward: Callable[[str], str | None] | None,
) -> bytearray | None:
    """The PROXY header of a flow presenting `source`: its destination is the address the client sent
    to (`local`, from IP_PKTINFO, a v4-mapped one as IPv4), else the listening socket's address (for a
    wildcard one, the host's address toward the client); both with the listening socket's port. None when
    the two cannot share one header."""
    if path.listen is None:
        return None
    host, port = path.listen
    # A datagram queued before IP_PKTINFO was set (the one that activated the service) has pktinfo too,
    # but an unspecified address in it.
    if local is not None and any(local):
        host = socket.inet_ntop(socket.AF_INET6 if len(local) == 16 else socket.AF_INET, local)
    if source_toward is not None and plain_address(host).is_unspecified:
        host = source_toward(source[0]) or host
    destination = str(plain_address(host))
    if family_of(destination) != family_of(source[0]):
        return None
    return bytearray(build(source, (destination, port)))


def readdress_header(flow: Flow, source_toward: Callable[[str], str | None] | None) -> bool:
    """--send-proxy-protocol: `flow`'s datagram came on another listener or to another of the host's
    addresses than its header names (or its header was a received one's): the header names the
    flow's listener and address now (built once per flow, listener and address). False when no
    header can."""
    key = (flow.path, flow.local_address)
    headers = flow.headers
    if headers is None:  # the first change: the header built with the flow is kept too
        headers = flow.headers = {}
        if flow.header is not None and flow.header_path is not None:
            headers[flow.header_path, flow.header_local] = flow.header
    header = headers.get(key)
    if header is None:
        header = proxy_header(flow.presented, flow.local_address, flow.path, source_toward)
        if header is None:
            return False
        bounded_put(headers, key, header, FLOW_HEADERS)
    flow.header, flow.header_path, flow.header_local = header, flow.path, flow.local_address
    return True


def chained_header(source: tuple[str, int], destination: tuple[str, int]) -> bytearray | DropReason:
    """--proxy-protocol-from with --send-proxy-protocol: the header sent on names the client presented
    and the destination the received header named (what the client asked the load balancer for, not
    this host's address); family-mismatch when one header cannot name both."""
    address = str(plain_address(destination[0]))
    if family_of(address) != family_of(source[0]):
        return DropReason.FAMILY_MISMATCH
    return bytearray(build(source, (address, destination[1])))


class NothingLocal:
    """The probe of a machine told nothing: no address is local (or a broadcast address)."""

    def __call__(self, address: str) -> bool:
        return False

    def forget(self) -> None:
        pass


class Verdict(enum.Enum):
    """How a client's datagrams leave, when they can."""

    BIND = "bind"  # from a socket (or the raw path) presenting the client's address: a kept flow
    ONCE = "once"  # the client's address is this host's: one datagram from a one-shot socket, nothing kept
    HEADER = "header"  # --send-proxy-protocol: from this host's address, the client named in a PROXY header


# A verdict and the (address, port) presented, or why the client cannot be presented.
Judgement = tuple[Verdict, tuple[str, int]] | DropReason


class SourcePolicy:
    """Judges clients: which source is presented for one, and how its datagrams leave, or why they are
    dropped. `names_in_header` (--send-proxy-protocol): nothing binds a client's address, so any family
    can be named, and a loopback or link-local client can be forwarded too (its replies leave from the
    listening socket). No client may claim a destination's address and port (`backends`). `is_local` and
    `is_broadcast` answer about this host's addresses; `forget` drops their cached answers (addresses
    change)."""

    def __init__(
        self,
        is_local: LocalProbe,
        is_broadcast: LocalProbe,
        *,
        names_in_header: bool,
        backends: Iterable[tuple[str, int]] | Backends = (),
    ) -> None:
        self.is_local = is_local
        self.is_broadcast = is_broadcast
        self.names_in_header = names_in_header
        # Every destination's (address, port): a client claiming one of them (spoofed, or the backend
        # itself) is never forwarded.
        self.backends = backends if isinstance(backends, Backends) else Backends(backends)

    def judge(
        self, client: SockAddr, family: socket.AddressFamily, target: tuple[str, int] | None = None
    ) -> Judgement:
        """The verdict for `client` toward a destination of `family` at `target`."""
        if self.names_in_header:
            named = plain_address(str(client[0]))
            source = presentable_source(client, family_of(named), self.is_broadcast)
            if source in _NAMEABLE:
                source = (str(named), int(client[1]))
        else:
            source = presentable_source(client, family, self.is_broadcast)
        if isinstance(source, DropReason):
            return source
        if source in self.backends or source == target:
            # Its flow's replies would go to the backend, whose answers come back to a listener as that
            # client's next datagram: a loop one datagram starts and nothing ends.
            return DropReason.BACKEND_SOURCE
        if self.names_in_header:
            return (Verdict.HEADER, source)
        return (Verdict.ONCE if self.is_local(source[0]) else Verdict.BIND, source)

    def keeps(self, source: tuple[str, int], family: socket.AddressFamily, target: tuple[str, int]) -> bool:
        """Whether a kept flow presenting `source` may stay, at an idle sweep: its verdict is still the one
        it was opened with (an address that became this host's, or a broadcast address of it, is not)."""
        if self.names_in_header:  # no socket is bound to a client's address
            return True
        judgement = self.judge(source, family, target)
        return not isinstance(judgement, DropReason) and judgement[0] is Verdict.BIND

    @staticmethod
    def refused(error_number: int, verdict: Verdict) -> DropReason:
        """Why a send of this verdict that failed with `error_number` is dropped: a local source whose port a
        local program holds (EADDRINUSE), or which the kernel refuses (EINVAL), is a drop of its own kind."""
        if verdict is Verdict.ONCE and error_number in (errno.EADDRINUSE, errno.EINVAL):
            return DropReason.LOCAL_SOURCE
        return DropReason.SEND_ERROR

    def forget(self) -> None:
        self.is_local.forget()
        self.is_broadcast.forget()
