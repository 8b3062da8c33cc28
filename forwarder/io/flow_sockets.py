"""The sockets that send as the client: a per-flow transparent socket bound to the client's address and
port, kept while the machine keeps the flow, and a one-shot one for a source local to this host.

In direct mode per-flow sockets stay **unconnected**: a connect()ed transparent socket bound to the
client's address would match the backend's reply to that client in UDP early demux, and the host would drop
the reply instead of forwarding it. In relay mode the reply is meant for that socket, so it may be connected
(`peer`). Either way they queue ICMP errors (IP_RECVERR), so a dead backend is seen. A local source never
gets a kept socket (another program must stay free to bind that port and get its replies).
"""

import contextlib
import socket
from collections.abc import Iterator, Sequence

from forwarder.io.sockets import set_receive_errors, set_transparent

_FLAGS = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def open_flow_socket(
    source: tuple[str, int], family: socket.AddressFamily, peer: tuple[str, int] | None = None
) -> socket.socket:
    """A non-blocking transparent UDP socket bound to `source` (the client's address and port), that
    queues ICMP errors; connected to `peer` when given."""
    sock = socket.socket(family, _FLAGS)
    try:
        set_transparent(sock)
        set_receive_errors(sock)
        # Two flows of one client (to two destinations) share its source address and port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(source)
        if peer is not None:
            sock.connect(peer)
    except OSError:
        sock.close()
        raise
    return sock


def open_plain_flow_socket(family: socket.AddressFamily, peer: tuple[str, int]) -> socket.socket:
    """A non-blocking UDP socket from this host's own address (--send-proxy-protocol: no IP_TRANSPARENT,
    no capability), connected to `peer` so that only its replies arrive, queueing ICMP errors."""
    sock = socket.socket(family, _FLAGS)
    try:
        set_receive_errors(sock)
        sock.connect(peer)
    except OSError:
        sock.close()
        raise
    return sock


def open_once_socket(source: tuple[str, int], family: socket.AddressFamily) -> socket.socket:
    """A socket bound to a local `source`, for one datagram (no SO_REUSEADDR: a local program holding the
    port must make this fail with EADDRINUSE rather than share it). No IP_TRANSPARENT: a local address
    needs none, so this needs no capability."""
    sock = socket.socket(family, _FLAGS)
    try:
        sock.bind(source)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def sharing_port(listeners: Sequence[socket.socket]) -> Iterator[None]:
    """While a flow socket is bound to a client's address on the port of these listening sockets (a
    client with source port 53 of a wildcard listener on 53), let them share it: the kernel checks
    SO_REUSEADDR on both sockets at bind time only, so the listeners have it for that one bind and their
    own value back at once, and no other program can bind next to them."""
    before = [sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) for sock in listeners]
    try:
        for sock in listeners:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        yield
    finally:
        for sock, value in zip(listeners, before, strict=True):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, value)
