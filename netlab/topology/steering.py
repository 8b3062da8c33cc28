"""tproxy steering declared in a topology (`[[nodes.NAME.tproxy]]`) or a scenario (`[[tproxy]]`): the one
reader of that table, so both files accept the same keys and refuse the same mistakes with one line.

    [[nodes.host.tproxy]]
    version = 4                       # 4 or 6: an `ip` or `ip6` table
    to_port = 27000                   # the port of the socket the datagrams are steered to
    dports = "27000-27099"            # and/or sports: a port, "FIRST-LAST", or a list of them
    daddr = "198.51.100.1"            # optional: saddr / daddr, an address or a network of the version
    iifname = "to-client"             # optional: only datagrams arriving on this interface
    nft = true                        # false leaves out the nft rule, rule = false the fwmark rule,
    rule = true                       #   route = false the local route: broken set-ups for the doctor
    route = true

The lab installs each one with netlab.lab.tproxy.steer once the links are up; this module only reads and
checks it, so a topology file is judged without the `lab` extra.
"""

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from netlab.errors import TopologyError
from netlab.topology.networks import ALLOWED_NETWORKS

PortRange = tuple[int, int]
KEYS = frozenset(
    {"version", "to_port", "dports", "sports", "daddr", "saddr", "iifname", "nft", "rule", "route"}
)
_PORTS_HINT = 'expected a port, "FIRST-LAST" or a list of them, each of 1 to 65535'


@dataclass(frozen=True)
class Steering:
    """One tproxy steering of a node: UDP matching the selectors goes to the socket bound to `to_port`."""

    node: str
    version: int
    to_port: int
    dports: tuple[PortRange, ...] | None = None
    sports: tuple[PortRange, ...] | None = None
    daddr: str | None = None
    saddr: str | None = None
    iifname: str | None = None
    nft: bool = True
    rule: bool = True
    route: bool = True
    label: str = ""

    def selectors(self) -> dict[str, Any]:
        """The keyword arguments of netlab.lab.tproxy.steer for this steering's selectors."""
        return {
            "dports": list(self.dports) if self.dports is not None else None,
            "sports": list(self.sports) if self.sports is not None else None,
            "daddr": self.daddr,
            "saddr": self.saddr,
            "iifname": self.iifname,
        }

    def describe(self) -> str:
        """One line for people: which datagrams go to which port, and the pieces left out."""
        ip = "ip" if self.version == 4 else "ip6"
        parts = [f"{self.node}: {ip}"]
        for key in ("saddr", "daddr"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"{key} {value}")
        for key in ("sports", "dports"):
            value = getattr(self, key)
            if value is not None:
                parts.append(f"udp {key[:-1]} " + ",".join(_port_text(r) for r in value))
        parts.append(f"-> :{self.to_port}")
        left_out = [piece for piece in ("nft", "rule", "route") if not getattr(self, piece)]
        if left_out:
            parts.append(f"(without {', '.join(left_out)})")
        return " ".join(parts)


def _port_text(ports: PortRange) -> str:
    first, last = ports
    return str(first) if first == last else f"{first}-{last}"


Fail = Callable[[str, str], Exception]  # (element, message) -> the error to raise


def topology_fail(source: str) -> Fail:
    """Errors as topology files give them: `SOURCE: ELEMENT: MESSAGE`."""
    return lambda element, message: TopologyError(f"{source}: {element}: {message}")


def _port(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        return None
    return value


def parse_ports(value: object, fail: Fail, element: str) -> tuple[PortRange, ...]:
    """A port (27000), a range ("27000-27099") or a list of them, as (first, last) ranges."""
    items = value if isinstance(value, list) else [value]
    ranges = []
    for item in items:
        if isinstance(item, str):
            first_text, dash, last_text = item.partition("-")
            numbers = (first_text, last_text if dash else first_text)
            if not all(text.strip().isdigit() for text in numbers):
                raise fail(element, f"{item!r}: {_PORTS_HINT}")
            first, last = _port(int(numbers[0])), _port(int(numbers[1]))
        else:
            first = last = _port(item)
        if first is None or last is None:
            raise fail(element, f"{item!r}: {_PORTS_HINT}")
        if first > last:
            raise fail(element, f"{item!r}: the first port is above the last")
        ranges.append((first, last))
    if not ranges:
        raise fail(element, f"[]: {_PORTS_HINT}")
    return tuple(ranges)


def _address(value: object, version: int, fail: Fail, element: str) -> str:
    if not isinstance(value, str):
        raise fail(element, f"expected an address or a network, got {value!r}")
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise fail(element, f"bad address {value!r}: expected an address or a network") from None
    if network.version != version:
        raise fail(element, f"{value!r} is not an IPv{version} address (version = {version})")
    inside = (
        network.network_address in allowed and network.broadcast_address in allowed
        for allowed in ALLOWED_NETWORKS
    )
    if not any(inside):
        ranges = ", ".join(map(str, ALLOWED_NETWORKS))
        raise fail(element, f"address {value!r} is outside the lab's address ranges {ranges}")
    return value


def parse_steering(table: Mapping[str, Any], node: str, fail: Fail, element: str) -> Steering:
    """Read and check one tproxy table of `node`; `fail(element, message)` makes the error for a mistake
    (topology_fail: a TopologyError naming the file)."""
    for key in table:
        if key not in KEYS:
            raise fail(element, f"unknown key {key!r}; expected one of {sorted(KEYS)}")
    version = table.get("version")
    if version not in (4, 6) or isinstance(version, bool):
        raise fail(f"{element}.version", f"expected 4 or 6, got {version!r}")
    to_port = _port(table.get("to_port"))
    if to_port is None:
        raise fail(f"{element}.to_port", f"expected a port of 1 to 65535, got {table.get('to_port')!r}")
    ports = {
        key: parse_ports(table[key], fail, f"{element}.{key}") if key in table else None
        for key in ("dports", "sports")
    }
    if ports["dports"] is None and ports["sports"] is None:
        raise fail(
            element, "needs dports (a range clients send to) or sports (the ports a backend answers from)"
        )
    addresses = {
        key: _address(table[key], version, fail, f"{element}.{key}") if key in table else None
        for key in ("daddr", "saddr")
    }
    iifname = table.get("iifname")
    if iifname is not None and not isinstance(iifname, str):
        raise fail(f"{element}.iifname", f"expected an interface name, got {iifname!r}")
    switches = {}
    for key in ("nft", "rule", "route"):
        value = table.get(key, True)
        if not isinstance(value, bool):
            raise fail(f"{element}.{key}", f"expected true or false, got {value!r}")
        switches[key] = value
    return Steering(
        node,
        version,
        to_port,
        ports["dports"],
        ports["sports"],
        addresses["daddr"],
        addresses["saddr"],
        iifname,
        label=f"{element} (tproxy in {node!r})",
        **switches,
    )


__all__ = ["KEYS", "Steering", "parse_ports", "parse_steering", "topology_fail"]
