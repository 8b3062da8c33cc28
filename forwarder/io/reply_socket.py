"""The tproxy reply socket (--reply-tproxy PORT): relay mode's one socket for every reply. The host steers
the backends' replies to it with an nftables `tproxy to :PORT` rule and a firewall mark routed to a local
table; it is bound to the wildcard address and PORT with IP_TRANSPARENT, and every reply it reads carries
its client, the address and port it was sent to, in IP_ORIGDSTADDR / IPV6_ORIGDSTADDR. So relay mode needs
no socket per client: a flow on the raw send path holds no descriptor at all.

Opened at start-up, while the forwarder holds its capability (IP_TRANSPARENT needs CAP_NET_RAW or
CAP_NET_ADMIN); nothing later needs one. Reading it is the engine's (forwarder.io.steered), which shares
the reply batch and its sendmmsg with the flow sockets' replies.
"""

import socket
from collections.abc import Iterable

from forwarder.errors import MissingPermissionError, OperatingSystemError
from forwarder.io.sockets import CAPABILITY_HINT, set_receive_buffer, set_receive_origdst, set_transparent

# Room per reply for its control messages: the original destination (a cmsghdr and a struct
# sockaddr_in6, the larger) with room to spare.
ORIGDST_SPACE = socket.CMSG_SPACE(28) + 16
# The reply socket's receive queue (SO_RCVBUFFORCE where allowed): every client's replies wait here
# while a listener is drained, so it is as large as the send queue of a flow socket times a few.
REPLY_SOCKET_BUFFER = 16 << 20


def key_layout(family: socket.AddressFamily) -> tuple[int, int]:
    """The room for a reply's source and the part of its control messages that a reply's key holds (see
    forwarder.io.replies), on a reply socket of `family`: on an IPv4 one a struct sockaddr_in and the
    IP_ORIGDSTADDR message only, a shorter key (it is hashed per reply); on a dual-stack one room for
    either family's."""
    if family == socket.AF_INET:
        return 16, socket.CMSG_SPACE(16)
    return 32, socket.CMSG_SPACE(28)


def reply_socket_family(families: Iterable[socket.AddressFamily]) -> socket.AddressFamily:
    """The family of the one reply socket for backends of `families`: IPv4 when all are IPv4, else a
    dual-stack IPv6 socket (an IPv4 reply on it carries IP_ORIGDSTADDR, an IPv6 one IPV6_ORIGDSTADDR)."""
    return socket.AF_INET if set(families) <= {socket.AF_INET} else socket.AF_INET6


def open_reply_socket(families: Iterable[socket.AddressFamily], port: int) -> socket.socket:
    """The non-blocking transparent UDP socket on the wildcard address and `port` that receives every
    steered reply with its original destination. MissingPermissionError (77) without CAP_NET_RAW or
    CAP_NET_ADMIN; OperatingSystemError (71) when the port cannot be bound."""
    family = reply_socket_family(families)
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        try:
            set_transparent(sock)
        except PermissionError:
            raise MissingPermissionError(
                f"--reply-tproxy {port}: cannot set IP_TRANSPARENT on the reply socket: {CAPABILITY_HINT}"
            ) from None
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        set_receive_origdst(sock)
        set_receive_buffer(sock, REPLY_SOCKET_BUFFER)
        try:
            sock.bind((wildcard, port))
        except OSError as error:
            raise OperatingSystemError(
                f"--reply-tproxy {port}: cannot bind the reply socket to {wildcard!r} port {port}: "
                f"{error.strerror}: expected a port no other socket holds"
            ) from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
