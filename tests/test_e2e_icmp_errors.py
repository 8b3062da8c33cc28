"""An ICMP error about one datagram costs no other datagram, whatever its kind, under systemd-socket-activate.

With IP_RECVERR the kernel leaves each ICMP error pending on the flow socket, and the next send fails with
it once instead of sending. The backend here rejects every other datagram (nftables `numgen`) with an ICMP
error the old list of retried errnos did not know: IPv4 protocol unreachable (ENOPROTOOPT) and IPv6
administratively prohibited (EACCES, firewalld's default). The host delivers those errors to the flow
sockets (the README's ICMP recipe, netlab.service.relay.route_backend_errors).

    client 198.51.100.10 2001:db8:1::10 --- 198.51.100.1 2001:db8:1::1 [host: forwarder]
    [host] 192.0.2.1 2001:db8:2::1 --- 192.0.2.2 2001:db8:2::2 backend (5353; rejects every other datagram)
"""

import socket

import pytest
from e2e_helpers import TotalsPredicate, status_has

from netlab import Lab, start_forwarder
from netlab.lab.nft import apply_ruleset
from netlab.service.relay import route_backend_errors
from netlab.service.status import drops_by_reason
from netlab.topology.model import Topology

pytestmark = pytest.mark.privileged

DATAGRAMS = 200


def deployment() -> Topology:
    return (
        Topology()
        .node("client")
        .node("host")
        .node("backend")
        .link(
            "client",
            "host",
            a_addresses=["198.51.100.10/24", "2001:db8:1::10/64"],
            b_addresses=["198.51.100.1/24", "2001:db8:1::1/64"],
        )
        .link(
            "host",
            "backend",
            a_addresses=["192.0.2.1/24", "2001:db8:2::1/64"],
            b_addresses=["192.0.2.2/24", "2001:db8:2::2/64"],
        )
        .route("client", "default", via="198.51.100.1")
        .route("client", "default", via="2001:db8:1::1")
        .route("backend", "default", via="192.0.2.1")
        .route("backend", "default", via="2001:db8:2::1")
    )


@pytest.mark.parametrize(
    ("family", "listen", "backend", "reject", "error"),
    [
        (
            socket.AF_INET,
            ("198.51.100.1", 53),
            ("192.0.2.2", 5353),
            "meta nfproto ipv4 reject with icmp type prot-unreachable",
            "protocol-unreachable",
        ),
        (
            socket.AF_INET6,
            ("2001:db8:1::1", 53),
            ("2001:db8:2::2", 5353),
            "meta nfproto ipv6 reject with icmpv6 type admin-prohibited",
            "admin-prohibited",
        ),
    ],
    ids=["ipv4-prot-unreachable", "ipv6-admin-prohibited"],
)
@pytest.mark.parametrize("receive", ["batch", "single"])
# Four clients round robin: every datagram is a flow's lone send (where the adversarial run lost them); one
# client: runs of one flow leave by sendmmsg (batch).
@pytest.mark.parametrize("clients", [4, 1])
def test_datagrams_after_an_icmp_error_of_any_kind_are_all_forwarded(  # noqa: PLR0917
    lab: Lab,
    family: socket.AddressFamily,
    listen: tuple[str, int],
    backend: tuple[str, int],
    reject: str,
    error: str,
    receive: str,
    clients: int,
) -> None:
    lab.build(deployment())
    host, far = lab["host"], lab["backend"]
    host.sysctl("net.ipv4.ip_forward", "1")
    host.sysctl("net.ipv6.conf.all.forwarding", "1")
    # Every rejected datagram gets its ICMP error (no rate limit), so a pending one meets many sends.
    far.sysctl("net.ipv4.icmp_ratelimit", "0")
    far.sysctl("net.ipv6.icmp.ratelimit", "0")
    route_backend_errors(host, [backend[0]])
    apply_ruleset(
        far,
        "table inet reject_some {\n"
        "    chain input {\n"
        "        type filter hook input priority filter; policy accept;\n"
        f"        udp dport {backend[1]} numgen inc mod 2 == 0 {reject}\n"
        "    }\n"
        "}\n",
    )
    arrivals = far.udp_socket(*backend)
    arrivals.settimeout(10)
    address = f"[{listen[0]}]:{listen[1]}" if family == socket.AF_INET6 else f"{listen[0]}:{listen[1]}"
    target = f"[{backend[0]}]:{backend[1]}" if family == socket.AF_INET6 else f"{backend[0]}:{backend[1]}"
    forwarder = start_forwarder(
        host, [address], [target], args=["--receive", receive, "--stats-interval", "0.2"]
    )
    client_address = "198.51.100.10" if family == socket.AF_INET else "2001:db8:1::10"
    senders = [lab["client"].udp_socket(client_address, 0) for _ in range(clients)]
    # The first datagram (rejected: numgen starts at 0) resolves every neighbour on the way and back; a
    # burst sent before that waits in the neighbour queues, which drop what exceeds their bytes under load
    # before the forwarder ever sees it.
    senders[0].sendto(b"datagram 0", listen)
    forwarder.wait_status(status_has(f"ICMP errors ({error} "), timeout=20)
    for index in range(1, DATAGRAMS):
        senders[index % clients].sendto(b"datagram %d" % index, listen)

    forwarder.wait_status(
        TotalsPredicate(lambda f, d: f + d == DATAGRAMS, f"forwarded + dropped = {DATAGRAMS}"), timeout=20
    )
    statuses = forwarder.notify.values("STATUS")
    assert drops_by_reason(statuses) == {}, statuses[-1]
    # Every other one was let through: each arrives, none was lost to the error before it.
    arrived = {arrivals.recv(65535) for _ in range(DATAGRAMS // 2)}
    assert len(arrived) == DATAGRAMS // 2
    assert any(f"ICMP errors ({error} " in status for status in statuses), statuses[-1]
    assert forwarder.stop() == 0
