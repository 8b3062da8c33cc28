"""The engine's per-flow sockets, for real inside a lab node (IP_TRANSPARENT needs CAP_NET_ADMIN): kept
unconnected and reused, capped with LRU eviction, closed when idle, never kept for a local source.

client 198.51.100.10 --- 198.51.100.1 [host: Sender] 192.0.2.1 --- 192.0.2.2 backend
"""

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import TypeVar

import pytest

from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.counters import DropReason
from forwarder.core.destination import Destination
from forwarder.core.flows import Flow
from forwarder.core.machine import ForwardingMachine
from forwarder.core.policy import LocalProbe
from forwarder.io.engine import Engine
from forwarder.io.flow_sockets import open_flow_socket, open_plain_flow_socket
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.io.sockets import BroadcastAddresses, LocalAddresses
from forwarder.service.notify import Notifier
from netlab import Lab
from netlab.lab import netns
from netlab.lab.process import python_env
from netlab.pytest_plugin import require_privileges
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


class Forwarder:
    """The engine and machine, fed datagrams directly (as a receive strategy would) in the host node."""

    def __init__(
        self,
        lab: Lab,
        max_flows: int,
        idle_timeout: float,
        is_local: LocalProbe | None = None,
        is_broadcast: LocalProbe | None = None,
    ) -> None:
        self.lab = lab
        self.machine = ForwardingMachine(max_flows, idle_timeout, is_local, is_broadcast)
        self.routes: dict[Destination, Route] = {}
        self.engine = Engine([], Notifier({}), self.machine)
        lab.defer(self.engine.close)

    def route(self, destination: Destination) -> Route:
        if destination not in self.routes:
            listener = self.lab["host"].udp_socket("198.51.100.1", 0)
            self.routes[destination] = Route(ListeningSocket(listener, "test"), destination)
        return self.routes[destination]

    def forward(self, payload: bytes, client: tuple[str, int], destination: Destination, now: float) -> None:
        route = self.route(destination)
        action = self.machine.receive(
            route.path, sockaddr_bytes(socket.AF_INET, client), len(payload), 0, now
        )
        in_host(self.lab, lambda: self.engine.execute(route, action, memoryview(payload)))

    def flow(self, client: tuple[str, int], destination: Destination = BACKEND) -> Flow | None:
        key = (destination.sockaddr, sockaddr_bytes(socket.AF_INET, client))
        return self.machine.flows.lookup(key)

    def clients(self) -> set[tuple[str, int]]:
        return {flow.presented for flow in self.machine.flows.values()}


@pytest.mark.privileged
def test_a_flow_socket_is_kept_unconnected_and_reused_for_the_next_datagram(
    lab: Lab, backend: socket.socket
) -> None:
    forwarder = Forwarder(lab, max_flows=8, idle_timeout=60)
    client = ("203.0.113.7", 4242)

    forwarder.forward(b"x", client, BACKEND, 1)
    first = forwarder.flow(client)
    forwarder.forward(b"x", client, BACKEND, 2)

    assert (forwarder.machine.counters.forwarded, forwarder.machine.counters.dropped) == (2, {})
    assert [backend.recvfrom(100) for _ in range(2)] == [(b"x", client)] * 2
    assert len(forwarder.machine.flows) == 1
    flow = forwarder.flow(client)
    assert flow is first
    assert flow is not None
    assert flow.socket is not None
    assert flow.socket.getsockname() == client
    with pytest.raises(OSError, match="not connected"):
        flow.socket.getpeername()


@pytest.mark.privileged
def test_flows_beyond_max_flows_evict_and_close_the_least_recently_used(
    lab: Lab, backend: socket.socket
) -> None:
    forwarder = Forwarder(lab, max_flows=2, idle_timeout=60)
    clients = [("203.0.113.1", 1001), ("203.0.113.2", 1002), ("203.0.113.3", 1003)]

    forwarder.forward(b"1", clients[0], BACKEND, 1)
    forwarder.forward(b"2", clients[1], BACKEND, 2)
    forwarder.forward(b"1", clients[0], BACKEND, 3)  # client 0 is now the most recent
    forwarder.forward(b"3", clients[2], BACKEND, 4)

    assert forwarder.clients() == {clients[0], clients[2]}
    assert sorted(backend.recvfrom(100) for _ in range(4)) == sorted(
        [(b"1", clients[0]), (b"2", clients[1]), (b"1", clients[0]), (b"3", clients[2])]
    )


@pytest.mark.privileged
def test_an_evicted_flow_socket_is_closed(lab: Lab, backend: socket.socket) -> None:
    forwarder = Forwarder(lab, max_flows=1, idle_timeout=60)
    forwarder.forward(b"a", ("203.0.113.1", 1001), BACKEND, 1)
    evicted = forwarder.flow(("203.0.113.1", 1001))
    assert evicted is not None
    sock = evicted.socket
    assert sock is not None

    forwarder.forward(b"b", ("203.0.113.2", 1002), BACKEND, 2)

    assert sock.fileno() == -1
    assert evicted.socket is None
    assert len(forwarder.machine.flows) == 1


@pytest.mark.privileged
def test_idle_flows_are_closed_after_the_idle_timeout(lab: Lab, backend: socket.socket) -> None:
    forwarder = Forwarder(lab, max_flows=8, idle_timeout=5)
    forwarder.forward(b"a", ("203.0.113.1", 1001), BACKEND, 100)
    flow = forwarder.flow(("203.0.113.1", 1001))
    assert flow is not None
    sock = flow.socket
    assert sock is not None

    assert forwarder.engine.expire(104) == 0
    assert forwarder.engine.expire(106) == 1
    assert sock.fileno() == -1
    assert len(forwarder.machine.flows) == 0


@pytest.mark.privileged
def test_a_local_source_is_sent_from_a_one_shot_socket_and_not_kept(lab: Lab, backend: socket.socket) -> None:
    forwarder = Forwarder(lab, max_flows=8, idle_timeout=60, is_local=LocalAddresses())

    def free_port() -> tuple[str, int]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a free port of the host
            probe.bind(("198.51.100.1", 0))
            return probe.getsockname()  # type: ignore[no-any-return]

    local = in_host(lab, free_port)
    in_host(lab, lambda: forwarder.forward(b"local", local, BACKEND, 1))

    assert (forwarder.machine.counters.forwarded, forwarder.machine.counters.dropped) == (1, {})
    assert backend.recvfrom(100) == (b"local", local)
    assert len(forwarder.machine.flows) == 0


class ChangingAddresses:
    """A locality probe whose answers the test changes, counting how often the cache is dropped."""

    def __init__(self) -> None:
        self.local: set[str] = set()
        self.forgotten = 0

    def __call__(self, address: str) -> bool:
        return address in self.local

    def forget(self) -> None:
        self.forgotten += 1


@pytest.mark.privileged
def test_a_flow_whose_source_became_local_is_closed_at_the_next_sweep(
    lab: Lab, backend: socket.socket
) -> None:
    addresses = ChangingAddresses()
    forwarder = Forwarder(lab, max_flows=8, idle_timeout=60, is_local=addresses)
    client = ("203.0.113.7", 4242)
    forwarder.forward(b"x", client, BACKEND, 1)
    flow = forwarder.flow(client)
    assert flow is not None
    sock = flow.socket
    assert sock is not None

    addresses.local.add("203.0.113.7")  # e.g. the address was added to one of the host's interfaces
    assert forwarder.engine.expire(2) == 1

    assert addresses.forgotten == 1  # the sweep asks again instead of trusting an old answer
    assert len(forwarder.machine.flows) == 0
    assert sock.fileno() == -1  # closed: a local program can bind that port again


@pytest.mark.privileged
def test_a_flow_whose_source_became_a_subnet_broadcast_is_closed_at_the_next_sweep(
    lab: Lab, backend: socket.socket
) -> None:
    broadcasts = ChangingAddresses()
    forwarder = Forwarder(lab, max_flows=8, idle_timeout=60, is_broadcast=broadcasts)
    client = ("203.0.113.255", 4242)
    forwarder.forward(b"x", client, BACKEND, 1)
    flow = forwarder.flow(client)
    assert flow is not None
    sock = flow.socket
    assert sock is not None

    broadcasts.local.add("203.0.113.255")  # e.g. 203.0.113.0/24 was added to one of the host's interfaces
    assert forwarder.engine.expire(2) == 1

    assert broadcasts.forgotten == 1
    assert len(forwarder.machine.flows) == 0
    assert sock.fileno() == -1
    forwarder.forward(b"y", client, BACKEND, 3)
    assert forwarder.machine.counters.dropped == {DropReason.BROADCAST_SOURCE.value: 1}


@pytest.mark.privileged
def test_a_host_subnets_broadcast_source_is_dropped_before_anything_is_bound(
    lab: Lab, backend: socket.socket
) -> None:
    forwarder = Forwarder(lab, max_flows=8, idle_timeout=60, is_broadcast=BroadcastAddresses())

    in_host(lab, lambda: forwarder.forward(b"b", ("198.51.100.255", 4242), BACKEND, 1))

    assert forwarder.machine.counters.dropped == {DropReason.BROADCAST_SOURCE.value: 1}
    assert len(forwarder.machine.flows) == 0
    in_host(lab, lambda: forwarder.forward(b"u", ("203.0.113.7", 4242), BACKEND, 1))
    assert backend.recvfrom(100) == (b"u", ("203.0.113.7", 4242))  # the first one never arrived


@pytest.mark.privileged
def test_one_client_can_have_flows_to_two_destinations(lab: Lab, backend: socket.socket) -> None:
    other = lab["backend"].udp_socket("192.0.2.2", 27001)
    other.settimeout(10)
    forwarder = Forwarder(lab, max_flows=8, idle_timeout=60)
    client = ("203.0.113.7", 4242)
    second = Destination(socket.AF_INET, "192.0.2.2", 27001)

    forwarder.forward(b"a", client, BACKEND, 1)
    forwarder.forward(b"b", client, second, 1)

    assert (forwarder.machine.counters.forwarded, forwarder.machine.counters.dropped) == (2, {})
    assert backend.recvfrom(100) == (b"a", client)
    assert other.recvfrom(100) == (b"b", client)
    assert len(forwarder.machine.flows) == 2


def test_max_flows_is_lowered_to_fit_the_open_file_limit() -> None:
    script = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))\n"
        "from forwarder.service.cli import fit_max_flows\n"
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


def socket_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_plain_flow_socket_that_cannot_reach_its_peer_is_closed_not_leaked() -> None:
    before = socket_count()
    with pytest.raises(socket.gaierror, match="family"):
        open_plain_flow_socket(socket.AF_INET, ("::1", 53))  # an IPv6 peer for an IPv4 socket
    assert socket_count() == before


@pytest.mark.privileged
def test_a_flow_socket_whose_source_port_is_held_is_closed_not_leaked() -> None:
    require_privileges()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:  # no SO_REUSEADDR: nobody shares it
        holder.bind(("127.0.0.1", 0))
        before = socket_count()
        with pytest.raises(OSError, match="in use"):
            open_flow_socket(holder.getsockname(), socket.AF_INET)
        assert socket_count() == before
