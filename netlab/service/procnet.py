"""The one reader of /proc/PID/net/udp and udp6: which UDP addresses and ports are bound in the network
namespace of a process, so the lab waits for a socket to exist instead of sleeping."""

import ipaddress


def _decode_proc_address(hex_address: str) -> tuple[str, int]:
    """'0100007F:6989' (as /proc/net/udp writes it: host-order words) -> ('127.0.0.1', 27017)."""
    address, _, port = hex_address.partition(":")
    raw = bytes.fromhex(address)
    if len(raw) == 4:
        host = str(ipaddress.IPv4Address(raw[::-1]))
    else:  # four host-order 32-bit words
        host = str(ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))
    return host, int(port, 16)


def udp_sockets_bound(pid: int) -> list[tuple[str, int]]:
    """Every (address, port) a UDP socket is bound to in the network namespace of `pid`."""
    bound: list[tuple[str, int]] = []
    for table in ("udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as handle:
                next(handle)
                bound += [_decode_proc_address(line.split()[1]) for line in handle]
        except (OSError, StopIteration):
            continue
    return bound


def udp_ports_bound(pid: int) -> set[int]:
    """Local UDP ports bound in the network namespace of `pid`."""
    return {port for _, port in udp_sockets_bound(pid)}
