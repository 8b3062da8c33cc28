"""The only addresses a lab may use (RFC 5737 and RFC 3849), so lab traffic can never be mistaken for (or
leak into) a real network: one home for the list, read by topologies, steerings and scenarios."""

import ipaddress

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
    ipaddress.ip_network("2001:db8::/32"),
)
