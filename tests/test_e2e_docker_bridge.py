"""Both reply modes in a Docker-like deployment (fixtures/topologies/docker-bridge.toml): containers on a
Linux bridge in the host, the host masquerading their outbound traffic as Docker does, the forwarder in
front of the container "web".

    client 198.51.100.10 --- 198.51.100.1 [host: forwarder, docker0 192.0.2.1, MASQUERADE 192.0.2.0/24]
    docker0 --- web 192.0.2.2 (the backend), other 192.0.2.3
"""

import socket

import pytest
from e2e_helpers import start_echo, status_has

from netlab import Lab, enable_reply_path, load_topology, start_forwarder
from netlab.bridge import masquerade_ruleset
from netlab.relayroute import install_relay_route

pytestmark = pytest.mark.privileged


@pytest.fixture
def docker(lab: Lab) -> Lab:
    lab.build(load_topology("docker-bridge"))
    rules = lab.workdir / "masquerade.nft"
    rules.write_text(masquerade_ruleset("192.0.2.0/24", "docker0"))
    lab["host"].check(["nft", "-f", str(rules)])
    return lab


def client_socket(lab: Lab, port: int = 0) -> socket.socket:
    sock = lab["client"].udp_socket("198.51.100.10", port)
    sock.settimeout(5)
    return sock


def test_the_containers_own_traffic_leaves_masqueraded_as_the_host(docker: Lab) -> None:
    outside = client_socket(docker, 7000)
    for container in ("web", "other"):
        docker[container].open_socket().sendto(container.encode(), ("198.51.100.10", 7000))
        payload, source = outside.recvfrom(100)
        assert (payload, source[0]) == (container.encode(), "198.51.100.1")


def test_relay_mode_answers_from_the_host_and_the_backends_own_traffic_is_still_masqueraded(
    docker: Lab,
) -> None:
    start_echo(docker, "192.0.2.2", 5353, node="web")
    install_relay_route(docker["host"], "192.0.2.2", 5353)
    forwarder = start_forwarder(
        docker["host"],
        ["198.51.100.1:53"],
        ["192.0.2.2:5353"],
        args=["--reply", "relay", "--stats-interval", "0.2"],
    )
    sock = client_socket(docker)

    sock.sendto(b"query", ("198.51.100.1", 53))
    assert sock.recvfrom(100) == (b"echo:query", ("198.51.100.1", 53))

    outside = client_socket(docker, 7000)  # the backend's own lookup, from an ephemeral port
    docker["web"].open_socket().sendto(b"own lookup", ("198.51.100.10", 7000))
    payload, source = outside.recvfrom(100)
    assert (payload, source[0]) == (b"own lookup", "198.51.100.1")  # routed and masqueraded as before
    forwarder.wait_status(status_has("1 replies relayed"))
    assert "would not reach" not in forwarder.process.output()


def test_direct_mode_answers_from_the_host_with_the_reply_path_rules(docker: Lab) -> None:
    start_echo(docker, "192.0.2.2", 27000, node="web")
    enable_reply_path(docker["host"], "192.0.2.2", "192.0.2.0/24", "198.51.100.1")
    start_forwarder(docker["host"], ["198.51.100.1:27000"], ["192.0.2.2:27000"])
    sock = client_socket(docker)

    sock.sendto(b"move", ("198.51.100.1", 27000))

    assert sock.recvfrom(100) == (b"echo:move", ("198.51.100.1", 27000))


def test_direct_mode_without_the_reply_path_rules_leaves_the_reply_unmasqueraded(docker: Lab) -> None:
    # Docker's MASQUERADE is stateful: the forwarder's spoofed send made the conntrack entry, the reply
    # matches it, and no NAT rule ever sees it, so it leaves with the container's address.
    start_echo(docker, "192.0.2.2", 27000, node="web")
    start_forwarder(docker["host"], ["198.51.100.1:27000"], ["192.0.2.2:27000"])
    sock = client_socket(docker)

    sock.sendto(b"move", ("198.51.100.1", 27000))

    assert sock.recvfrom(100) == (b"echo:move", ("192.0.2.2", 27000))
