"""The reply path of a transparent forward: make the host send the backend's replies to clients with the
host's own address, as the client expects.

A stateful SNAT/MASQUERADE rule cannot do it: conntrack files the backend's reply under the entry the
forwarder's spoofed send created, so the NAT hook never sees a new flow. What works (README, The reply path):
`notrack` for the forwarded UDP flows, plus a stateless source rewrite of the replies in postrouting.

Every rule matches the backend's address and `meta l4proto udp`, never `udp sport` alone: the second and
later fragments of a large reply carry no UDP header, and a rule that needs one would leave them with the
backend's address, so the client never reassembles the reply. Only a backend port other than the host's
(a DNS backend on 5353 behind the host's 53) needs a port rewrite, and that one touches the UDP header,
which only the first fragment has.
"""

import ipaddress
from collections.abc import Mapping
from pathlib import Path

from netlab.errors import TopologyError
from netlab.lab.nft import apply_ruleset
from netlab.lab.node import LabNode

TABLE = "netlab_reply_path"


def reply_path_ruleset(
    backend: str, backend_network: str, host_address: str, ports: Mapping[int, int] | None = None
) -> str:
    """The nftables ruleset (for `nft -f`) that rewrites `backend`'s replies to leave as `host_address`;
    `ports` maps a backend port to the host port its replies must come from (only where they differ)."""
    version = ipaddress.ip_address(backend).version
    if ipaddress.ip_address(host_address).version != version:
        raise TopologyError(f"host address {host_address!r} and backend {backend!r} differ in family")
    ip = "ip" if version == 4 else "ip6"
    port_rules = "".join(
        f"        {ip} saddr {backend} {ip} daddr != {backend_network} udp sport {backend_port} "
        f"udp sport set {host_port}\n"
        for backend_port, host_port in sorted((ports or {}).items())
        if backend_port != host_port
    )
    replies = f"{ip} saddr {backend} {ip} daddr != {backend_network} meta l4proto udp"
    return f"""table inet {TABLE} {{
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        {ip} saddr {backend} meta l4proto udp notrack
    }}
    chain output {{
        type filter hook output priority raw; policy accept;
        {ip} daddr {backend} meta l4proto udp notrack
    }}
    chain postrouting {{
        type filter hook postrouting priority srcnat; policy accept;
{port_rules}        {replies} {ip} saddr set {host_address}
    }}
}}
"""


def enable_reply_path(
    host: LabNode,
    backend: str,
    backend_network: str,
    host_address: str,
    ports: Mapping[int, int] | None = None,
) -> Path:
    """Install the reply-path rules in `host`; returns the ruleset file (kept in the lab's workdir)."""
    ruleset = reply_path_ruleset(backend, backend_network, host_address, ports)
    return apply_ruleset(host, ruleset, label="reply-path")
