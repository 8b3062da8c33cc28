"""The reply path of a transparent forward: make the host send the backend's replies to clients with the
host's own address, as the client expects.

A stateful SNAT/MASQUERADE rule cannot do it: conntrack files the backend's reply under the entry the
forwarder's spoofed send created, so the NAT hook never sees a new flow. What works (machine-facts.md):
`notrack` for the forwarded UDP flows, plus a stateless source rewrite of the replies in postrouting.
"""

import ipaddress
from pathlib import Path

from netlab.errors import TopologyError
from netlab.lab.nft import apply_ruleset
from netlab.lab.node import LabNode

TABLE = "netlab_reply_path"


def reply_path_ruleset(backend: str, backend_network: str, host_address: str) -> str:
    """The nftables ruleset (for `nft -f`) that rewrites `backend`'s replies to leave as `host_address`."""
    version = ipaddress.ip_address(backend).version
    if ipaddress.ip_address(host_address).version != version:
        raise TopologyError(f"host address {host_address!r} and backend {backend!r} differ in family")
    ip = "ip" if version == 4 else "ip6"
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
        {ip} saddr {backend} {ip} daddr != {backend_network} meta l4proto udp {ip} saddr set {host_address}
    }}
}}
"""


def enable_reply_path(host: LabNode, backend: str, backend_network: str, host_address: str) -> Path:
    """Install the reply-path rules in `host`; returns the ruleset file (kept in the lab's workdir)."""
    return apply_ruleset(host, reply_path_ruleset(backend, backend_network, host_address), label="reply-path")
