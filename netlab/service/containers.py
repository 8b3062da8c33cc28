"""A container host's own NAT and forward filter, as dockerd and podman set them up for a bridge network, in
nftables form: MASQUERADE of the containers' outbound traffic (`-s 172.17.0.0/16 ! -o docker0 -j
MASQUERADE`), and a FORWARD filter that lets into the bridge only what answers the containers' own
traffic. So a lab host with a bridge (fixtures/topologies/docker-bridge.toml) behaves like a Docker host:
the outside reaches a container only through something running on the host (a published port, the
forwarder)."""

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from netlab.errors import TopologyError
from netlab.lab.nft import apply_ruleset
from netlab.lab.node import LabNode

TABLE = "netlab_containers"


def container_host_ruleset(networks: Sequence[str], bridge: str = "docker0") -> str:
    """The ruleset (for `nft -f`) that masquerades traffic from `networks` leaving by any other interface
    than `bridge` (container to container stays un-NATed, as with Docker) and drops forwarded traffic
    into `bridge` that is not a reply to the containers."""
    rules = []
    for text in networks:
        try:
            network = ipaddress.ip_network(text)
        except ValueError:
            raise TopologyError(f"container network {text!r}: expected a CIDR network") from None
        ip = "ip" if network.version == 4 else "ip6"
        rules.append(f'        {ip} saddr {network} oifname != "{bridge}" masquerade')
    if not rules:
        raise TopologyError("masquerade needs at least one container network")
    body = "\n".join(rules)
    return f"""table inet {TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
{body}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        oifname "{bridge}" iifname "{bridge}" accept
        oifname "{bridge}" ct state established,related accept
        oifname "{bridge}" counter drop comment "into the containers"
    }}
}}
"""


def enable_container_host(host: LabNode, networks: Sequence[str], bridge: str = "docker0") -> Path:
    """Install the container host's MASQUERADE and forward filter in `host`; returns the ruleset file."""
    return apply_ruleset(host, container_host_ruleset(networks, bridge), label="container-host")


__all__ = ["TABLE", "container_host_ruleset", "enable_container_host"]
