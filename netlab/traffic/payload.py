"""The payload pattern of `size = N` (scenarios, `netlab send --size`, `send_udp(size=)`): recognisable
and position-revealing, so a datagram that arrives truncated or reordered inside shows where."""


def make_payload(size: int) -> bytes:
    """A recognisable payload of `size` bytes: a repeating, position-revealing byte pattern."""
    return bytes(index % 251 for index in range(size))
