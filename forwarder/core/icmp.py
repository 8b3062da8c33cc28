"""ICMP errors reported on a flow socket's error queue (IP_RECVERR / IPV6_RECVERR, read with MSG_ERRQUEUE):
the kernel's struct sock_extended_err decoded, and named the way STATUS= and the metrics count them. Pure:
the engine reads the queue, this says what an entry means.

A port unreachable from the backend (the backend host is up but nothing listens: a stopped service) is
`backend-unreachable`; the others are named by ICMP type and code, one vocabulary for ICMP and ICMPv6. The
names are a fixed set, whatever arrives: anyone can send an ICMP error with any type and code, and each
name becomes a metrics series and a log line per interval, so the rest are `icmp-other` / `icmp6-other`.
"""

import errno
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from forwarder.core.addresses import decode_sockaddr

SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
# struct sock_extended_err: ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data.
_EXTENDED_ERROR = struct.Struct("=IBBBBII")
EXTENDED_ERROR_SIZE = _EXTENDED_ERROR.size

ICMP_ORIGINS = (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6)

BACKEND_UNREACHABLE = "backend-unreachable"
ICMP_OTHER = "icmp-other"
ICMP6_OTHER = "icmp6-other"
LOCAL_OTHER = "local-other"
_ICMP = {
    (3, 0): "net-unreachable",
    (3, 1): "host-unreachable",
    (3, 2): "protocol-unreachable",
    (3, 3): BACKEND_UNREACHABLE,
    (3, 4): "packet-too-big",
    (3, 9): "admin-prohibited",
    (3, 10): "admin-prohibited",
    (3, 13): "admin-prohibited",
}
_ICMP_TYPES = {11: "time-exceeded", 12: "parameter-problem"}
_ICMP6 = {
    (1, 0): "net-unreachable",
    (1, 1): "admin-prohibited",
    (1, 3): "host-unreachable",
    (1, 4): BACKEND_UNREACHABLE,
    (1, 5): "admin-prohibited",
    (1, 6): "admin-prohibited",
}
_ICMP6_TYPES = {2: "packet-too-big", 3: "time-exceeded", 4: "parameter-problem"}


@dataclass(frozen=True, slots=True)
class QueuedError:
    """One entry of a socket's error queue."""

    error_number: int
    origin: int
    type: int
    code: int
    offender: str | None  # the address that sent the ICMP error, when the kernel says

    @property
    def name(self) -> str:
        """What it is counted as: backend-unreachable, host-unreachable, ..., icmp-other / icmp6-other for
        any other type and code, local-ERRNO (a known errno name, else local-other)."""
        if self.origin == SO_EE_ORIGIN_ICMP:
            return _ICMP.get((self.type, self.code)) or _ICMP_TYPES.get(self.type, ICMP_OTHER)
        if self.origin == SO_EE_ORIGIN_ICMP6:
            return _ICMP6.get((self.type, self.code)) or _ICMP6_TYPES.get(self.type, ICMP6_OTHER)
        name = errno.errorcode.get(self.error_number)
        return "local-" + name if name is not None else LOCAL_OTHER


def failed_by_pending_error(error_number: int, queued: Iterable["QueuedError | None"]) -> bool:
    """The rule of every send path, for a send that failed with `error_number`: was it an ICMP error about
    an earlier datagram, rather than this one's own failure? With IP_RECVERR the kernel queues each ICMP
    error and also leaves it pending on the socket (sk_err), and the next send returns it, once, instead
    of sending; whatever its kind (port or protocol unreachable, admin-prohibited: ECONNREFUSED,
    ENOPROTOOPT, EACCES, ...). So exactly when the error queue, read right after the failure (`queued`),
    held an ICMP error with that errno: then the datagram is sent once more, and the error counted as the
    ICMP error it is. A second failure is the datagram's own."""
    return any(
        error is not None and error.origin in ICMP_ORIGINS and error.error_number == error_number
        for error in queued
    )


def decode_extended_error(data: bytes) -> QueuedError | None:
    """The struct sock_extended_err (and the offender's sockaddr after it) of an error queue's control
    message, or None when it is cut short."""
    if len(data) < _EXTENDED_ERROR.size:
        return None
    error_number, origin, icmp_type, code, _, _, _ = _EXTENDED_ERROR.unpack_from(data)
    offender = None
    name = data[_EXTENDED_ERROR.size :]
    family = int.from_bytes(name[0:2], "little") if len(name) >= 2 else 0
    if (family == socket.AF_INET and len(name) >= 8) or (family == socket.AF_INET6 and len(name) >= 28):
        offender = str(decode_sockaddr(name)[0])
    return QueuedError(error_number, origin, icmp_type, code, offender)
