"""A datagram to craft with scapy, as the lab describes it to the agent process (JSON on its command line).

Kept apart from netlab.programs.agent so that importing the lab never imports the agent module it runs
with -m.
"""

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from netlab.errors import PacketError

MAX_PAYLOAD = 65507  # the largest UDP payload an IPv4 datagram can carry
MAX_PAYLOAD_IPV6 = 65527  # 65535 - 8: the IPv6 payload length counts the UDP header
MIN_FRAGMENT = {4: 8, 6: 56}  # IPv4: payload bytes per fragment; IPv6: headers (48) and 8 bytes of data


def payload_limit(version: int) -> int:
    """The largest UDP payload of an IP version's datagram."""
    return MAX_PAYLOAD if version == 4 else MAX_PAYLOAD_IPV6


def check_port(port: object, what: str) -> int:
    """A port a crafted datagram may carry, 0 to 65535 (0 too: the forwarder must drop it)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise PacketError(f"{what} {port!r}: expected a port from 0 to 65535")
    return port


def check_size(size: object, version: int) -> int:
    """A payload size for `size = N` / `--size N`: 0 up to what UDP over that IP version carries."""
    limit = payload_limit(version)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= limit:
        raise PacketError(f"size {size!r}: a UDP payload over IPv{version} is 0 to {limit} bytes")
    return size


@dataclass(frozen=True)
class Crafted:
    """One datagram to craft: any (spoofed) source, destination, ports, payload, repeated `count` times.

    `fragment_size` forces fragments of at most that many bytes per packet (IPv4: payload bytes per
    fragment, rounded down to a multiple of 8; IPv6: whole fragment size); 0 fragments only above the MTU.
    """

    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes = b""
    count: int = 1
    fragment_size: int = 0

    def check(self) -> "Crafted":
        """Return self when scapy can make this datagram; PacketError naming the bad value otherwise."""
        versions = []
        for what, address in (("source", self.src), ("destination", self.dst)):
            try:
                versions.append(ipaddress.ip_address(address).version)
            except ValueError:
                raise PacketError(f"{what} {address!r}: expected an IPv4 or IPv6 address") from None
        source, destination = versions
        if source != destination:
            raise PacketError(
                f"source {self.src!r} is IPv{source} but destination {self.dst!r} is IPv{destination}"
            )
        check_port(self.sport, "source port")
        check_port(self.dport, "destination port")
        check_size(len(self.payload), destination)
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise PacketError(f"count {self.count!r}: expected 1 or more")
        least = MIN_FRAGMENT[destination]
        if self.fragment_size != 0 and not least <= self.fragment_size <= 65535:
            raise PacketError(
                f"fragment size {self.fragment_size!r}: expected 0 (only above the MTU) "
                f"or {least} to 65535 for IPv{destination}"
            )
        return self

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["payload"] = self.payload.hex()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Crafted":
        return cls(**{**data, "payload": bytes.fromhex(data.get("payload", ""))})
