"""A datagram to craft with scapy, as the lab describes it to the agent process (JSON on its command line).

Kept apart from netlab.programs.agent so that importing the lab never imports the agent module it runs
with -m.
"""

from dataclasses import asdict, dataclass
from typing import Any

MAX_PAYLOAD = 65507  # the largest UDP payload an IPv4 datagram can carry
MAX_PAYLOAD_IPV6 = 65527  # 65535 - 8: the IPv6 payload length counts the UDP header


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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["payload"] = self.payload.hex()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Crafted":
        return cls(**{**data, "payload": bytes.fromhex(data.get("payload", ""))})
