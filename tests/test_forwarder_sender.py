"""The Sender's per-flow sockets, for real inside a lab node (IP_TRANSPARENT needs CAP_NET_ADMIN): kept
unconnected and reused, capped with LRU eviction, closed when idle, never kept for a local source.

client 198.51.100.10 --- 198.51.100.1 [host: Sender] 192.0.2.1 --- 192.0.2.2 backend
"""

import socket
import subprocess
import sys
from collections.abc import Callable
from typing import TypeVar

import pytest

from forwarder.core import DropReason
from forwarder.destination import Destination
from forwarder.sender import Sender
from netlab import Lab
from netlab.lab import netns
from netlab.lab.process import python_env
from netlab.topology.shipped import seed_deployment

T = TypeVar("T")
BACKEND = Destination(socket.AF_INET, "192.0.2.2", 27000)


def in_host(lab: Lab, function: Callable[[], T]) -> T:
    """Run `function` in a thread inside the host node, so the sockets it makes live there."""
    return netns.run_in(lab["host"].namespace, function)


@pytest.fixture
def backend(lab: Lab) -> socket.socket:
    lab.build(seed_deployment())
    sock = lab["backend"].udp_socket("192.0.2.2", 27000)
    sock.settimeout(10)
    return sock


@pytest.mark.privileged
def test_a_flow_socket_is_kept_unconnected_and_reused_for_the_next_datagram(
    lab: Lab, backend: socket.socket
) -> None:
    sender = Sender(max_flows=8, idle_timeout=60)
    lab.defer(sender.close)
    client = ("203.0.113.7", 4242)

    outcomes = in_host(lab, lambda: [sender.send(memoryview(b"x"), client, BACKEND, now) for now in (1, 2)])

    assert outcomes == [None, None]
    assert [backend.recvfrom(100) for _ in range(2)] == [(b"x", client)] * 2
    assert len(sender.flows) == 1
    flow = sender.flows.get((BACKEND.sockaddr, client), 3)
    assert flow is not None
    assert flow.getsockname() == client
    with pytest.raises(OSError, match="not connected"):
        flow.getpeername()


@pytest.mark.privileged
def test_flows_beyond_max_flows_evict_and_close_the_least_recently_used(
    lab: Lab, backend: socket.socket
) -> None:
    sender = Sender(max_flows=2, idle_timeout=60)
    lab.defer(sender.close)
    clients = [("203.0.113.1", 1001), ("203.0.113.2", 1002), ("203.0.113.3", 1003)]

    def run() -> None:
        sender.send(memoryview(b"1"), clients[0], BACKEND, 1)
        sender.send(memoryview(b"2"), clients[1], BACKEND, 2)
        sender.send(memoryview(b"1"), clients[0], BACKEND, 3)  # client 0 is now the most recent
        sender.send(memoryview(b"3"), clients[2], BACKEND, 4)

    in_host(lab, run)
    assert {key[1] for key in sender.flows} == {clients[0], clients[2]}
    assert sorted(backend.recvfrom(100) for _ in range(4)) == sorted(
        [(b"1", clients[0]), (b"2", clients[1]), (b"1", clients[0]), (b"3", clients[2])]
    )


@pytest.mark.privileged
def test_an_evicted_flow_socket_is_closed(lab: Lab, backend: socket.socket) -> None:
    sender = Sender(max_flows=1, idle_timeout=60)
    lab.defer(sender.close)

    def run() -> socket.socket:
        sender.send(memoryview(b"a"), ("203.0.113.1", 1001), BACKEND, 1)
        evicted = sender.flows.get((BACKEND.sockaddr, ("203.0.113.1", 1001)), 1)
        assert evicted is not None
        sender.send(memoryview(b"b"), ("203.0.113.2", 1002), BACKEND, 2)
        return evicted

    evicted = in_host(lab, run)
    assert evicted.fileno() == -1
    assert len(sender.flows) == 1


@pytest.mark.privileged
def test_idle_flows_are_closed_after_the_idle_timeout(lab: Lab, backend: socket.socket) -> None:
    sender = Sender(max_flows=8, idle_timeout=5)
    lab.defer(sender.close)
    in_host(lab, lambda: sender.send(memoryview(b"a"), ("203.0.113.1", 1001), BACKEND, 100))
    flow = sender.flows.get((BACKEND.sockaddr, ("203.0.113.1", 1001)), 100)
    assert flow is not None

    assert sender.expire(104) == 0
    assert sender.expire(106) == 1
    assert flow.fileno() == -1
    assert len(sender.flows) == 0


@pytest.mark.privileged
def test_a_local_source_is_sent_from_a_one_shot_socket_and_not_kept(lab: Lab, backend: socket.socket) -> None:
    sender = Sender(max_flows=8, idle_timeout=60)
    lab.defer(sender.close)

    def run() -> tuple[tuple[str, int], object]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a free port of the host
            probe.bind(("198.51.100.1", 0))
            local = probe.getsockname()
        return local, sender.send(memoryview(b"local"), local, BACKEND, 1)

    local, outcome = in_host(lab, run)
    assert outcome is None
    assert backend.recvfrom(100) == (b"local", local)
    assert len(sender.flows) == 0


@pytest.mark.privileged
def test_a_flow_whose_source_became_local_is_closed_at_the_next_sweep(
    lab: Lab, backend: socket.socket
) -> None:
    local: set[str] = set()
    sender = Sender(max_flows=8, idle_timeout=60, is_local=lambda address: address in local)
    lab.defer(sender.close)
    client = ("203.0.113.7", 4242)
    assert in_host(lab, lambda: sender.send(memoryview(b"x"), client, BACKEND, 1)) is None
    flow = sender.flows.get((BACKEND.sockaddr, client), 1)
    assert flow is not None

    local.add("203.0.113.7")  # e.g. the address was added to one of the host's interfaces
    assert sender.expire(2) == 1

    assert len(sender.flows) == 0
    assert flow.fileno() == -1  # closed: a local program can bind that port again


@pytest.mark.privileged
def test_a_flow_whose_source_became_a_subnet_broadcast_is_closed_at_the_next_sweep(
    lab: Lab, backend: socket.socket
) -> None:
    broadcasts: set[str] = set()
    sender = Sender(max_flows=8, idle_timeout=60, is_broadcast=lambda address: address in broadcasts)
    lab.defer(sender.close)
    client = ("203.0.113.255", 4242)
    assert in_host(lab, lambda: sender.send(memoryview(b"x"), client, BACKEND, 1)) is None

    broadcasts.add("203.0.113.255")  # e.g. 203.0.113.0/24 was added to one of the host's interfaces
    assert sender.expire(2) == 1

    assert len(sender.flows) == 0
    assert in_host(lab, lambda: sender.send(memoryview(b"y"), client, BACKEND, 3)) == (
        DropReason.BROADCAST_SOURCE,
        "",
    )


@pytest.mark.privileged
def test_the_sender_drops_a_host_subnets_broadcast_source_before_binding_it(
    lab: Lab, backend: socket.socket
) -> None:
    sender = Sender(max_flows=8, idle_timeout=60)
    lab.defer(sender.close)

    outcome = in_host(lab, lambda: sender.send(memoryview(b"b"), ("198.51.100.255", 4242), BACKEND, 1))

    assert outcome == (DropReason.BROADCAST_SOURCE, "")
    assert len(sender.flows) == 0
    assert in_host(lab, lambda: sender.send(memoryview(b"u"), ("203.0.113.7", 4242), BACKEND, 1)) is None
    assert backend.recvfrom(100) == (b"u", ("203.0.113.7", 4242))  # the first one never arrived


@pytest.mark.privileged
def test_one_client_can_have_flows_to_two_destinations(lab: Lab, backend: socket.socket) -> None:
    other = lab["backend"].udp_socket("192.0.2.2", 27001)
    other.settimeout(10)
    sender = Sender(max_flows=8, idle_timeout=60)
    lab.defer(sender.close)
    client = ("203.0.113.7", 4242)
    second = Destination(socket.AF_INET, "192.0.2.2", 27001)

    outcomes = in_host(
        lab,
        lambda: [
            sender.send(memoryview(b"a"), client, BACKEND, 1),
            sender.send(memoryview(b"b"), client, second, 1),
        ],
    )

    assert outcomes == [None, None]
    assert backend.recvfrom(100) == (b"a", client)
    assert other.recvfrom(100) == (b"b", client)


def test_max_flows_is_lowered_to_fit_the_open_file_limit() -> None:
    script = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))\n"
        "from forwarder.cli import fit_max_flows\n"
        "print(fit_max_flows(4096, 2), fit_max_flows(10, 2))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.split() == ["134", "10"]
    assert result.stderr.splitlines() == ["--max-flows 4096 lowered to 134 to fit RLIMIT_NOFILE 200"]
