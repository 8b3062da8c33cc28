"""`netlab doctor` names each missing piece of a transparent forward, with the command that fixes it.

    client 198.51.100.10 --- 198.51.100.1 [host] 192.0.2.1 --- 192.0.2.2 backend
    spoofed clients 203.0.113.0/24, routed back by the host via the client
Each test breaks one thing in an otherwise healthy lab and asserts the doctor names exactly that.
"""

import pytest

from netlab import Lab, Topology, load_topology
from netlab.doctor.checks import Deployment, Finding, diagnose
from netlab.doctor.probes import NamespaceProbe
from netlab.lab.nft import apply_ruleset
from netlab.lab.wait import wait_until
from netlab.service.replypath import enable_reply_path
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged


def deployment_of(lab: Lab) -> Deployment:
    return Deployment(
        host=NamespaceProbe("host", lab["host"].namespace),
        backend=NamespaceProbe("backend", lab["backend"].namespace),
        backend_address="192.0.2.2",
        host_address="198.51.100.1",
        clients=["198.51.100.10", "203.0.113.7"],
        host_backend_address="192.0.2.1",
    )


def problems(lab: Lab) -> list[Finding]:
    return [finding for finding in diagnose(deployment_of(lab)) if not finding.ok]


def healthy(lab: Lab, topology: Topology | None = None) -> Lab:
    lab.build(topology or seed_deployment())
    enable_reply_path(lab["host"], "192.0.2.2", "192.0.2.0/24", "198.51.100.1")
    return lab


def test_a_healthy_deployment_has_no_findings(lab: Lab) -> None:
    assert problems(healthy(lab)) == []


def test_missing_ip_forward_is_named_with_the_sysctl_that_fixes_it(lab: Lab) -> None:
    healthy(lab)["host"].sysctl("net.ipv4.ip_forward", "0")
    [finding] = problems(lab)
    assert finding.check == "ip_forward"
    assert finding.fix == "netlab exec host -- sysctl -w net.ipv4.ip_forward=1"


def test_stateful_masquerade_is_named_as_the_conntrack_reply_trap(lab: Lab) -> None:
    lab.build(seed_deployment())
    apply_ruleset(
        lab["host"],
        "table ip nat { chain postrouting { type nat hook postrouting priority srcnat; "
        "ip saddr 192.0.2.2 masquerade; }; }\n",
    )
    [finding] = problems(lab)
    assert finding.check == "conntrack reply trap"
    assert "notrack" in finding.fix
    assert "ip saddr set 198.51.100.1" in finding.fix


def test_no_reply_rewrite_at_all_is_named_with_the_ruleset_to_install(lab: Lab) -> None:
    lab.build(seed_deployment())
    [finding] = problems(lab)
    assert finding.check == "reply source rewrite"
    assert "ip saddr 192.0.2.2 ip daddr != 192.0.2.0/24" in finding.fix


def test_backend_without_a_route_to_clients_via_the_host_is_named(lab: Lab) -> None:
    topology = seed_deployment()
    topology.routes = [route for route in topology.routes if route.node != "backend"]
    healthy(lab, topology)
    found = problems(lab)
    assert {finding.check for finding in found} == {"backend route to clients"}
    assert found[0].fix == "netlab exec backend -- ip route add 0.0.0.0/0 via 192.0.2.1"


def test_host_without_a_route_back_to_spoofed_clients_is_named_as_rp_filter(lab: Lab) -> None:
    topology = seed_deployment()
    topology.routes = [route for route in topology.routes if route.node != "host"]
    healthy(lab, topology)
    lab["host"].sysctl("net.ipv4.conf.all.rp_filter", "1")
    [finding] = problems(lab)
    assert finding.check == "rp_filter"
    assert "203.0.113.7" in finding.detail


def capability_finding(lab: Lab) -> Finding:
    return next(f for f in diagnose(deployment_of(lab)) if f.check == "CAP_NET_RAW")


def test_a_forwarder_that_can_never_have_had_cap_net_raw_is_named_with_the_unit_setting(lab: Lab) -> None:
    healthy(lab)
    # A process named like the forwarder whose bounding set lacks every capability (a unit that grants none).
    lab["host"].run(
        [
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--",
            "bash",
            "-c",
            "exec -a systemd-transparent-udp-forwarderd sleep 60",
        ],
        label="capless",
    )

    wait_until(lambda: not capability_finding(lab).ok, "the doctor to see the capless forwarder", 5)
    finding = capability_finding(lab)
    assert "AmbientCapabilities=CAP_NET_RAW" in finding.fix


def test_a_forwarder_that_gave_its_capabilities_up_after_start_up_is_healthy(lab: Lab) -> None:
    healthy(lab)
    # Holds nothing now, as the raw send path leaves it, but its bounding set allowed CAP_NET_RAW at start-up.
    lab["host"].run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all,+net_raw",
            "--",
            "bash",
            "-c",
            "exec -a systemd-transparent-udp-forwarderd sleep 60",
        ],
        label="dropped",
    )

    def capless_now() -> bool:
        finding = capability_finding(lab)
        return finding.ok and "gave them up" in finding.detail

    wait_until(capless_now, "the doctor to see a forwarder that dropped its capabilities", 5)
    assert not [finding for finding in problems(lab) if finding.check == "CAP_NET_RAW"]


def test_missing_ipv6_forwarding_is_named(lab: Lab) -> None:
    lab.build(load_topology("seed-ipv6"))
    lab["host"].sysctl("net.ipv6.conf.all.forwarding", "0")
    deployment = Deployment(
        host=NamespaceProbe("host", lab["host"].namespace),
        backend=NamespaceProbe("backend", lab["backend"].namespace),
        backend_address="2001:db8:2::2",
        host_address="2001:db8:51::1",
        clients=["2001:db8:51::10"],
    )
    checks = {finding.check: finding for finding in diagnose(deployment)}
    assert not checks["IPv6 forwarding"].ok
    assert checks["IPv6 forwarding"].fix == "netlab exec host -- sysctl -w net.ipv6.conf.all.forwarding=1"
