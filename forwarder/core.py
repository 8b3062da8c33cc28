"""The forwarder's decisions, with no sockets: which source address to present for a client, and whether a
datagram is forwarded or dropped (and why). Adapters in engine.py do the I/O around these rules.
"""

import enum
import ipaddress
import socket
from collections import Counter
from dataclasses import dataclass, field

SockAddr = tuple[str, int] | tuple[str, int, int, int]


class DropReason(enum.Enum):
    """Why a datagram was not forwarded; the value is the word used in STATUS= and logs."""

    TRUNCATED = "truncated"
    FAMILY_MISMATCH = "family-mismatch"
    LOOPBACK_SOURCE = "loopback-source"
    SEND_ERROR = "send-error"


def presentable_source(
    client: SockAddr, destination_family: socket.AddressFamily
) -> tuple[str, int] | DropReason:
    """The (address, port) to bind to so the backend sees `client`, or why that cannot be done.

    A v4-mapped IPv6 client (from a dual-stack listener) is presented as plain IPv4 to an IPv4 backend.
    """
    host, port = str(client[0]), int(client[1])
    address = ipaddress.ip_address(host.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    wanted = 4 if destination_family == socket.AF_INET else 6
    if address.version != wanted:
        return DropReason.FAMILY_MISMATCH
    if address.is_loopback:
        return DropReason.LOOPBACK_SOURCE
    return (str(address), port)


@dataclass(slots=True)
class Counters:
    """What happened since the last report: forwarded datagrams and drops by reason (and errno)."""

    forwarded: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def drop(self, reason: DropReason, detail: str = "") -> None:
        self.dropped[f"{reason.value}:{detail}" if detail else reason.value] += 1

    def summary(self, seconds: float) -> str:
        """The STATUS= line: forwarded count and drops by reason."""
        text = f"{self.forwarded} datagrams forwarded in the last {seconds:g} seconds"
        if self.dropped:
            reasons = ", ".join(f"{key} {count}" for key, count in sorted(self.dropped.items()))
            text += f", {sum(self.dropped.values())} dropped ({reasons})"
        return text + "."

    def reset(self) -> None:
        self.forwarded = 0
        self.dropped.clear()
