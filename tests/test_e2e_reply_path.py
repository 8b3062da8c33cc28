"""The reply path: a client that connect()s gets the backend's reply from the host's address.

client 198.51.100.10 --- 198.51.100.1 [host: forwarder + reply-path rules] 192.0.2.1 --- 192.0.2.2 backend
"""

import socket

import pytest
from e2e_helpers import start_echo

from netlab import Lab, TopologyError, start_forwarder
from netlab.service.replypath import enable_reply_path, reply_path_ruleset
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged


def connected_client(lab: Lab) -> socket.socket:
    client = lab["client"].udp_socket("198.51.100.10", 0)
    client.connect(("198.51.100.1", 27000))  # a connected socket rejects a reply from any other source
    client.settimeout(5)
    return client


def test_client_gets_the_reply_from_the_hosts_address_with_the_reply_path_rules(lab: Lab) -> None:
    lab.build(seed_deployment())
    start_echo(lab, "192.0.2.2", 27000)
    enable_reply_path(lab["host"], "192.0.2.2", "192.0.2.0/24", "198.51.100.1")
    start_forwarder(lab["host"], ["198.51.100.1:27000"], ["192.0.2.2:27000"])
    client = connected_client(lab)

    for attempt in (b"one", b"two"):
        client.send(attempt)
        assert client.recv(65535) == b"echo:" + attempt


def test_without_the_reply_path_rules_the_connected_client_gets_nothing(lab: Lab) -> None:
    lab.build(seed_deployment())
    start_echo(lab, "192.0.2.2", 27000)
    start_forwarder(lab["host"], ["198.51.100.1:27000"], ["192.0.2.2:27000"])
    client = connected_client(lab)
    client.settimeout(1)

    client.send(b"one")
    with pytest.raises(TimeoutError):
        client.recv(65535)  # the reply left with the backend's address, which the client rejects


def test_ruleset_refuses_mixed_families() -> None:
    with pytest.raises(TopologyError, match="differ in family"):
        reply_path_ruleset("192.0.2.2", "192.0.2.0/24", "2001:db8::1")
