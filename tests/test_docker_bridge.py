"""The Docker-like topology (fixtures/topologies/docker-bridge.toml): a bridge on the host with two
containers, the host's MASQUERADE and forward filter as dockerd sets them up, and the forwarder on the
host carrying a client to a container and back, in both reply modes.

    client 198.51.100.10, 2001:db8:51::10 --- 198.51.100.1, 2001:db8:51::1 [host]
        [host] docker0 192.0.2.1, 2001:db8:2::1 === c1 192.0.2.2, 2001:db8:2::2
                                                === c2 192.0.2.3, 2001:db8:2::3
"""

import socket
import sys

import pytest
from pyroute2 import IPRoute

from netlab import Lab, load_topology, start_forwarder
from netlab.addresses import format_endpoint
from netlab.lab.build import add_route
from netlab.lab.nft import rule_packets
from netlab.lab.process import python_env
from netlab.lab.wait import wait_until
from netlab.service.containers import TABLE, container_host_ruleset, enable_container_host
from netlab.service.procnet import udp_ports_bound
from netlab.service.relay import install_relay_routing
from netlab.service.replypath import enable_reply_path
from netlab.traffic.expect import expect

pytestmark = pytest.mark.privileged

NETWORKS = ["192.0.2.0/24", "2001:db8:2::/64"]
FAMILIES = {
    "ipv4": {"client": "198.51.100.10", "host": "198.51.100.1", "c1": "192.0.2.2", "c2": "192.0.2.3"},
    "ipv6": {
        "client": "2001:db8:51::10",
        "host": "2001:db8:51::1",
        "c1": "2001:db8:2::2",
        "c2": "2001:db8:2::3",
    },
}


def docker_host(lab: Lab) -> Lab:
    lab.build(load_topology("docker-bridge"))
    enable_container_host(lab["host"], NETWORKS)
    return lab


def kind(family: str) -> int:
    return socket.AF_INET if family == "ipv4" else socket.AF_INET6


def test_the_ruleset_masquerades_each_container_network_off_the_bridge() -> None:
    ruleset = container_host_ruleset(NETWORKS, "docker0")
    assert 'ip saddr 192.0.2.0/24 oifname != "docker0" masquerade' in ruleset
    assert 'ip6 saddr 2001:db8:2::/64 oifname != "docker0" masquerade' in ruleset
    assert 'oifname "docker0" ct state established,related accept' in ruleset


def test_the_bridge_is_built_with_its_addresses_and_the_containers_veths_as_ports(lab: Lab) -> None:
    lab.build(load_topology("docker-bridge"))
    with IPRoute(netns=lab["host"].namespace) as ipr:
        (bridge,) = ipr.get_links(ifname="docker0")
        assert bridge.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"
        ports = {
            link.get_attr("IFLA_IFNAME")
            for link in ipr.get_links()
            if link.get_attr("IFLA_MASTER") == bridge["index"]
        }
        addresses = {
            str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=bridge["index"]) if a["scope"] == 0
        }
    assert ports == {"veth-c1", "veth-c2"}
    assert addresses == {"192.0.2.1", "2001:db8:2::1"}


@pytest.mark.parametrize("family", FAMILIES)
def test_containers_reach_each_other_over_the_bridge_with_their_own_addresses(lab: Lab, family: str) -> None:
    docker_host(lab)
    addresses = FAMILIES[family]
    inbox = expect(lab["c2"], port=9000)
    lab["c1"].send_fast(dst=addresses["c2"], dport=9000, payloads=[b"neighbour"])
    inbox.datagram(src=addresses["c1"], payload=b"neighbour").arrives(within=3).and_nothing_else()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_container_reaches_the_client_side_through_the_hosts_masquerade_and_gets_the_answer(
    lab: Lab, family: str
) -> None:
    docker_host(lab)
    addresses = FAMILIES[family]
    client = lab["client"].udp_socket(addresses["client"], 9000)
    client.settimeout(3)
    container = lab["c1"].udp_socket(addresses["c1"], 0)
    container.settimeout(3)

    container.sendto(b"lookup", (addresses["client"], 9000))
    data, peer = client.recvfrom(65535)
    client.sendto(b"answer", peer)

    assert (data, peer[0]) == (b"lookup", addresses["host"])  # masqueraded to the host's address
    assert container.recvfrom(65535) == (b"answer", (addresses["client"], 9000, *peer[2:]))


@pytest.mark.parametrize("family", FAMILIES)
def test_without_the_masquerade_the_client_sees_the_containers_own_address(lab: Lab, family: str) -> None:
    lab.build(load_topology("docker-bridge"))
    addresses = FAMILIES[family]
    inbox = expect(lab["client"], port=9000)
    lab["c1"].send_fast(dst=addresses["client"], dport=9000, payloads=[b"unmasked"])
    inbox.datagram(src=addresses["c1"], payload=b"unmasked").arrives(within=3).and_nothing_else()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_client_cannot_reach_a_container_directly_even_with_a_route(lab: Lab, family: str) -> None:
    docker_host(lab)
    addresses = FAMILIES[family]
    with pytest.raises(OSError, match="Network is unreachable"):  # no route to the containers
        lab["client"].send_fast(dst=addresses["c1"], dport=9000, payloads=[b"direct"])
    network = NETWORKS[0] if family == "ipv4" else NETWORKS[1]
    add_route(lab["client"].namespace, network, addresses["host"])  # a neighbour's shortcut
    inbox = expect(lab["c1"], port=9000)

    lab["client"].send_fast(dst=addresses["c1"], dport=9000, payloads=[b"direct"])

    inbox.nothing(quiet=0.5)  # the host's forward filter lets only replies into the bridge
    assert rule_packets(lab["host"], "inet", TABLE, "into the containers") == 1


def start_echo(lab: Lab, node: str, port: int) -> None:
    echo = lab[node].run(
        [sys.executable, "-m", "netlab.programs.echo", str(port)], env=python_env(), label="echo"
    )
    wait_until(lambda: port in udp_ports_bound(echo.pid), "the echo server to listen", 10)


def exchange(lab: Lab, family: str, port: int = 27000) -> bytes:
    """A client's connect()ed socket (which takes replies only from the host's address) sends; the reply."""
    addresses = FAMILIES[family]
    sock = lab["client"].udp_socket(addresses["client"], 4242)
    sock.connect((addresses["host"], port))
    sock.settimeout(15)
    sock.send(b"hello")
    return sock.recv(65535)


@pytest.mark.parametrize("family", FAMILIES)
def test_direct_mode_the_forwarder_carries_the_client_to_a_container_and_the_reply_back(
    lab: Lab, family: str
) -> None:
    docker_host(lab)
    addresses = FAMILIES[family]
    start_echo(lab, "c1", 27000)
    enable_reply_path(lab["host"], addresses["c1"], NETWORKS[family == "ipv6"], addresses["host"])
    start_forwarder(
        lab["host"], [format_endpoint(addresses["host"], 27000)], [format_endpoint(addresses["c1"], 27000)]
    )

    reply = exchange(lab, family)

    assert reply.startswith(f"seen={format_endpoint(addresses['client'], 4242)};".encode())


@pytest.mark.parametrize("family", FAMILIES)
def test_relay_mode_the_forwarder_carries_the_client_to_a_container_on_another_port_and_back(
    lab: Lab, family: str
) -> None:
    docker_host(lab)
    addresses = FAMILIES[family]
    start_echo(lab, "c1", 5353)
    install_relay_routing(lab["host"], addresses["c1"], 5353)
    start_forwarder(
        lab["host"],
        [format_endpoint(addresses["host"], 27000)],
        [format_endpoint(addresses["c1"], 5353)],
        args=["--reply", "relay"],
    )

    reply = exchange(lab, family)

    assert reply.startswith(f"seen={format_endpoint(addresses['client'], 4242)};".encode())
