"""Reply relay (`--reply relay`) end to end, under systemd-socket-activate: the host routes the backend's
replies to itself (netlab.service.relay), the forwarder's flow socket receives them and sends each to the
client from the listening socket, from the exact address the client sent to.

    client 198.51.100.10 2001:db8:1::10 --- 198.51.100.1 198.51.100.2 2001:db8:1::1 [host: forwarder]
    [host] 192.0.2.1 2001:db8:2::1 --- 192.0.2.2 2001:db8:2::2 backend (answers on 5353, not 53)

The host does not forward at all (ip_forward=0): in relay mode nothing needs it.
"""

import socket
import sys
import time
from typing import Any

import pytest
from e2e_helpers import send_path, serve_in_thread, status_has

from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.destination import Destination
from forwarder.core.flows import Flow
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import Settings
from forwarder.io.engine import Engine
from forwarder.io.linux import IP_PKTINFO
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.io.sockets import set_receive_buffer
from forwarder.service.notify import Notifier
from netlab import Lab, hold_listen_sockets, start_forwarder
from netlab.lab import netns
from netlab.lab.node import LabNode
from netlab.lab.process import python_env
from netlab.lab.wait import wait_until
from netlab.service.procnet import udp_ports_bound
from netlab.service.relay import enable_reassembly, install_relay_route, route_backend_errors
from netlab.topology.model import Topology

pytestmark = pytest.mark.privileged

RELAY = ["--reply", "relay", "--stats-interval", "0.2"]
__all__ = ["send_path"]  # the fixture: the forward direction runs on both send paths


def relay_deployment() -> Topology:
    return (
        Topology()
        .node("client")
        .node("host")
        .node("backend")
        .link(
            "client",
            "host",
            a_addresses=["198.51.100.10/24", "2001:db8:1::10/64"],
            b_addresses=["198.51.100.1/24", "198.51.100.2/24", "2001:db8:1::1/64"],
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


def _answer(data: bytes, peer: Any) -> bytes:
    """`seen=IP:PORT;` then the datagram; "size=N" asks for an answer of N bytes."""
    host = str(peer[0]).removeprefix("::ffff:")
    answer = f"seen={host}:{peer[1]};".encode() + data
    if data.startswith(b"size="):  # "size=N": answer with N bytes
        size = int(data[5:].partition(b";")[0])
        answer = (answer * (size // len(answer) + 1))[:size]
    return answer


def start_answering(node: LabNode, address: str, port: int) -> None:
    """A backend that answers every datagram to its sender: `seen=IP:PORT;` then the datagram."""
    serve_in_thread(node.lab, node.udp_socket(address, port), _answer)


def client_socket(lab: Lab, address: str, port: int = 0) -> socket.socket:
    sock = lab["client"].udp_socket(address, port)
    sock.settimeout(5)
    return sock


@pytest.fixture
def relay_lab(lab: Lab) -> Lab:
    lab.build(relay_deployment())
    lab["host"].sysctl("net.ipv4.ip_forward", "0")
    start_answering(lab["backend"], "192.0.2.2", 5353)
    start_answering(lab["backend"], "2001:db8:2::2", 5353)
    install_relay_route(lab["host"], "192.0.2.2", 5353)
    install_relay_route(lab["host"], "2001:db8:2::2", 5353)
    return lab


@pytest.mark.parametrize(
    ("listen", "destination", "client", "asked"),
    [
        ("198.51.100.1:53", "192.0.2.2:5353", "198.51.100.10", ("198.51.100.1", 53)),
        ("[2001:db8:1::1]:53", "[2001:db8:2::2]:5353", "2001:db8:1::10", ("2001:db8:1::1", 53, 0, 0)),
        ("[::]:53", "192.0.2.2:5353", "198.51.100.10", ("198.51.100.1", 53)),
        ("[::]:53", "[2001:db8:2::2]:5353", "2001:db8:1::10", ("2001:db8:1::1", 53, 0, 0)),
    ],
    ids=["ipv4", "ipv6", "dual-stack-ipv4-client", "dual-stack-ipv6-client"],
)
def test_a_reply_from_a_backend_on_another_port_reaches_the_client_from_the_address_it_asked(
    relay_lab: Lab,
    send_path: list[str],
    *,
    listen: str,
    destination: str,
    client: str,
    asked: tuple[object, ...],
) -> None:
    forwarder = start_forwarder(relay_lab["host"], [listen], [destination], args=[*RELAY, *send_path])
    sock = client_socket(relay_lab, client)

    sock.sendto(b"ping", asked[:2])
    answer, source = sock.recvfrom(65535)

    assert (answer, source) == (f"seen={client}:{sock.getsockname()[1]};ping".encode(), asked)
    forwarder.wait_status(status_has("1 replies relayed"))


@pytest.mark.parametrize("receive", ["batch", "single"])
def test_a_wildcard_listener_answers_from_whichever_of_the_hosts_addresses_the_client_asked(
    relay_lab: Lab, receive: str, send_path: list[str]
) -> None:
    start_forwarder(
        relay_lab["host"], ["0.0.0.0:53"], ["192.0.2.2:5353"], args=[*RELAY, "--receive", receive, *send_path]
    )
    sock = client_socket(relay_lab, "198.51.100.10")
    # The activating datagram waited in the socket before the forwarder asked for IP_PKTINFO; a .socket
    # unit sets PassPacketInfo=yes for it (the next test). Its reply leaves from the primary address.
    sock.sendto(b"start", ("198.51.100.1", 53))
    assert sock.recvfrom(100)[1] == ("198.51.100.1", 53)

    for asked in ("198.51.100.2", "198.51.100.1", "198.51.100.2"):
        sock.sendto(asked.encode(), (asked, 53))
        answer, source = sock.recvfrom(65535)
        assert (answer.rpartition(b";")[2], source) == (asked.encode(), (asked, 53))


def test_with_pass_packet_info_even_the_activating_datagrams_reply_leaves_from_the_address_asked(
    relay_lab: Lab,
) -> None:
    held = hold_listen_sockets(relay_lab["host"], ["0.0.0.0:53"])
    held.sockets[0].setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)  # what PassPacketInfo=yes does
    start_forwarder(relay_lab["host"], [], ["192.0.2.2:5353"], args=RELAY, sockets=held)
    sock = client_socket(relay_lab, "198.51.100.10")

    sock.sendto(b"first", ("198.51.100.2", 53))

    assert sock.recvfrom(100)[1] == ("198.51.100.2", 53)


def test_a_client_with_source_port_53_gets_its_reply_on_port_53(relay_lab: Lab) -> None:
    # Its flow socket is bound to 198.51.100.10:53 next to the host's own 0.0.0.0:53 (SO_REUSEADDR on both).
    forwarder = start_forwarder(relay_lab["host"], ["0.0.0.0:53"], ["192.0.2.2:5353"], args=RELAY)
    sock = client_socket(relay_lab, "198.51.100.10", 53)

    sock.sendto(b"from 53", ("198.51.100.1", 53))

    assert sock.recvfrom(65535) == (b"seen=198.51.100.10:53;from 53", ("198.51.100.1", 53))
    forwarder.wait_status(status_has("since start 1 forwarded, 0 dropped, 1 replies relayed"))


def test_with_listen_a_client_with_source_port_53_is_served_too(relay_lab: Lab) -> None:
    # --listen binds the socket itself; without SO_REUSEADDR on it the flow socket's bind would fail.
    process = relay_lab["host"].run(
        [sys.executable, "-m", "forwarder", "--listen", "0.0.0.0:53", "--reply", "relay", "192.0.2.2:5353"],
        label="forwarder",
        env=python_env(),
    )
    wait_until(lambda: 53 in udp_ports_bound(process.pid), "the forwarder to listen", 10)
    sock = client_socket(relay_lab, "198.51.100.10", 53)

    sock.sendto(b"from 53", ("198.51.100.1", 53))

    assert sock.recvfrom(65535) == (b"seen=198.51.100.10:53;from 53", ("198.51.100.1", 53)), process.output()


def test_the_metrics_file_counts_relayed_replies(relay_lab: Lab) -> None:
    path = relay_lab.workdir / "forwarder.prom"
    forwarder = start_forwarder(
        relay_lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=[*RELAY, "--metrics-file", str(path)]
    )
    sock = client_socket(relay_lab, "198.51.100.10")
    for payload in (b"one", b"two"):
        sock.sendto(payload, ("198.51.100.1", 53))
        sock.recvfrom(100)
    forwarder.wait_status(status_has("2 replies relayed, 0 replies dropped"))

    text = path.read_text()
    assert 'transparent_udp_forwarder_replies_relayed_total{listen="198.51.100.1:53"} 2\n' in text
    assert 'transparent_udp_forwarder_datagrams_forwarded_total{listen="198.51.100.1:53"} 2\n' in text


@pytest.mark.parametrize(
    ("listen", "destination", "client", "host"),
    [
        ("198.51.100.1:53", "192.0.2.2:5353", "198.51.100.10", "198.51.100.1"),
        ("[2001:db8:1::1]:53", "[2001:db8:2::2]:5353", "2001:db8:1::10", "2001:db8:1::1"),
    ],
    ids=["ipv4", "ipv6"],
)
def test_a_1473_byte_request_and_a_3000_byte_reply_arrive_intact_in_fragments(
    relay_lab: Lab, send_path: list[str], *, listen: str, destination: str, client: str, host: str
) -> None:
    # The host reassembles before routing (connection tracking), so the relay rule sees the reply's ports.
    enable_reassembly(relay_lab["host"])
    forwarder = start_forwarder(relay_lab["host"], [listen], [destination], args=[*RELAY, *send_path])
    sock = client_socket(relay_lab, client)
    request = b"size=3000;" + bytes(range(256)) * 5 + b"x" * 183  # 1473 bytes: fragmented at MTU 1500
    assert len(request) == 1473

    sock.sendto(request, (host, 53))
    answer, source = sock.recvfrom(65535)

    expected = f"seen={client}:{sock.getsockname()[1]};".encode() + request
    assert len(answer) == 3000
    assert answer == (expected * 3)[:3000]
    assert source[:2] == (host, 53)
    forwarder.wait_status(status_has("1 replies relayed, 0 dropped"))


def test_the_backends_own_traffic_is_still_routed_normally(relay_lab: Lab) -> None:
    relay_lab["host"].sysctl("net.ipv4.ip_forward", "1")
    relay_lab["host"].sysctl("net.ipv6.conf.all.forwarding", "1")
    start_forwarder(relay_lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=RELAY)
    outside = client_socket(relay_lab, "198.51.100.10", 7000)  # e.g. a resolver the backend asks
    outside6 = client_socket(relay_lab, "2001:db8:1::10", 7000)

    # From another port than the one the replies come from, in both families: forwarded, not swallowed.
    for address, receiver in (("198.51.100.10", outside), ("2001:db8:1::10", outside6)):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        backend = relay_lab["backend"].open_socket(family)
        backend.sendto(b"own lookup", (address, 7000))
        assert receiver.recvfrom(100)[0] == b"own lookup"
    # ... while its replies are still relayed.
    sock = client_socket(relay_lab, "198.51.100.10")
    sock.sendto(b"ping", ("198.51.100.1", 53))
    assert sock.recvfrom(100)[1] == ("198.51.100.1", 53)


def test_without_the_relay_rule_the_forwarder_warns_at_start_naming_the_rule_to_add(lab: Lab) -> None:
    lab.build(relay_deployment())
    start_answering(lab["backend"], "192.0.2.2", 5353)
    forwarder = start_forwarder(lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=RELAY)
    client_socket(lab, "198.51.100.10").sendto(b"start", ("198.51.100.1", 53))
    forwarder.wait_ready()

    warnings = [line for line in forwarder.process.output().splitlines() if "would not reach" in line]
    assert len(warnings) == 1, forwarder.process.output()
    assert "replies from 192.0.2.2:5353 to clients would not reach this host's sockets" in warnings[0]
    assert (
        "add `ip rule add from 192.0.2.2 ipproto udp sport 5353 lookup 100` and "
        "`ip route add local 0.0.0.0/0 dev lo table 100`" in warnings[0]
    )


def test_with_the_relay_rule_the_forwarder_starts_without_a_warning(relay_lab: Lab) -> None:
    forwarder = start_forwarder(
        relay_lab["host"],
        ["198.51.100.1:53", "[2001:db8:1::1]:53"],
        ["192.0.2.2:5353", "[2001:db8:2::2]:5353"],
        args=RELAY,
    )
    client_socket(relay_lab, "198.51.100.10").sendto(b"start", ("198.51.100.1", 53))
    forwarder.wait_ready()
    assert "would not reach" not in forwarder.process.output()


def test_a_backend_on_the_host_itself_answers_through_the_relay(lab: Lab) -> None:
    # go-mmproxy's set-up: ip rule add from 127.0.0.0/8 iif lo lookup 100, local 0.0.0.0/0 dev lo table 100.
    lab.build(relay_deployment())
    start_answering(lab["host"], "127.0.0.1", 5353)
    install_relay_route(lab["host"], "127.0.0.1")
    forwarder = start_forwarder(lab["host"], ["198.51.100.1:53"], ["127.0.0.1:5353"], args=RELAY)
    sock = client_socket(lab, "198.51.100.10")

    sock.sendto(b"local", ("198.51.100.1", 53))

    assert sock.recvfrom(100) == (
        f"seen=198.51.100.10:{sock.getsockname()[1]};local".encode(),
        ("198.51.100.1", 53),
    )
    forwarder.wait_status(status_has("1 replies relayed"))
    assert "would not reach" not in forwarder.process.output()


@pytest.mark.parametrize("mode", ["direct", "relay"])
def test_datagrams_to_a_stopped_backend_are_counted_as_backend_unreachable_once_each(
    lab: Lab, mode: str, send_path: list[str]
) -> None:
    # The backend's ICMP errors are addressed to the client; the host delivers them to the flow socket.
    lab.build(relay_deployment())
    lab["host"].sysctl("net.ipv4.ip_forward", "1")
    install_relay_route(lab["host"], "192.0.2.2", 5353)
    route_backend_errors(lab["host"], ["192.0.2.2"])
    forwarder = start_forwarder(
        lab["host"],
        ["198.51.100.1:53"],
        ["192.0.2.2:5353"],
        args=["--reply", mode, "--stats-interval", "0.2", *send_path],
    )
    sock = client_socket(lab, "198.51.100.10")  # nothing listens on the backend's 5353
    for _ in range(3):
        sock.sendto(b"anyone?", ("198.51.100.1", 53))

    forwarder.wait_status(status_has("ICMP errors (backend-unreachable "))
    # A pending ICMP error never costs a datagram; in relay mode on the raw path both the raw socket and the
    # flow socket get each error, which is counted once (the backend answers each datagram with one).
    forwarder.wait_status(status_has("since start 3 forwarded, 0 dropped"))
    forwarder.wait_status(status_has(", 3 ICMP errors;"))
    assert forwarder.stop() == 0
    assert all(", 4 ICMP errors" not in value for value in forwarder.notify.values("STATUS"))
    assert "ICMP error (backend-unreachable) from 192.0.2.2" in forwarder.process.output()


# --- the engine in the host, fed by hand: what happens to replies is exact, not timing ---------------------


class Relay:
    """The engine and machine in relay mode in the host node, with one route, fed datagrams by hand."""

    def __init__(self, lab: Lab, max_flows: int = 8, buffer_size: int = 65536) -> None:
        self.lab = lab
        listener = lab["host"].udp_socket("198.51.100.1", 53)
        listener.setblocking(False)
        self.route = Route(ListeningSocket(listener, "dns"), Destination(socket.AF_INET, "192.0.2.2", 5353))
        self.machine = ForwardingMachine(Settings(max_flows=max_flows, flow_idle_timeout=60, reply="relay"))
        self.engine = Engine([self.route], Notifier({}), self.machine, buffer_size=buffer_size)
        lab.defer(self.engine.close)

    def forward(self, client: socket.socket, payload: bytes) -> Flow:
        """Forward `payload` as if `client` had sent it; return its flow."""
        raw = sockaddr_bytes(socket.AF_INET, client.getsockname())
        action = self.machine.receive(self.route.path, raw, len(payload), 0, time.monotonic())
        netns.run_in(
            self.lab["host"].namespace, lambda: self.engine.execute(self.route, action, memoryview(payload))
        )
        flow = self.machine.flows.lookup((self.route.path.target, raw))
        assert flow is not None
        assert flow.socket is not None
        return flow

    def reply_waiting(self, flow: Flow) -> None:
        """Wait until a reply is queued on `flow`'s socket (the engine is not polling it)."""
        sock = flow.socket
        assert sock is not None

        def queued() -> bool:
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            return True

        wait_until(queued, f"a reply queued on {flow}", 5)

    def replies_handled(self, flow: Flow, count: int) -> None:
        """Let the engine read `flow`'s socket until `count` replies were relayed or dropped."""

        def handled() -> bool:
            netns.run_in(self.lab["host"].namespace, lambda: self.engine.flow_ready(flow, time.monotonic()))
            counters = self.machine.counters
            return counters.relayed + sum(counters.reply_dropped.values()) >= count

        wait_until(handled, f"{count} replies handled", 5)


@pytest.fixture
def relay_host(lab: Lab) -> Lab:
    lab.build(relay_deployment())
    install_relay_route(lab["host"], "192.0.2.2", 5353)
    return lab


def test_a_reply_larger_than_the_receive_buffer_is_counted_not_cut(relay_host: Lab) -> None:
    backend = relay_host["backend"].udp_socket("192.0.2.2", 5353)
    relay = Relay(relay_host, buffer_size=1024)
    client = client_socket(relay_host, "198.51.100.10")
    flow = relay.forward(client, b"ask")
    backend.settimeout(5)
    _, asker = backend.recvfrom(100)

    backend.sendto(b"x" * 1200, asker)  # one packet: no fragments
    backend.sendto(b"fits", asker)
    relay.replies_handled(flow, 2)

    assert client.recvfrom(100) == (b"fits", ("198.51.100.1", 53))
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recvfrom(100)
    assert (relay.machine.counters.relayed, relay.machine.counters.reply_dropped) == (
        1,
        {"reply-truncated": 1},
    )


def test_replies_still_queued_when_their_flow_is_evicted_are_counted_unmatched(relay_host: Lab) -> None:
    backend = relay_host["backend"].udp_socket("192.0.2.2", 5353)
    backend.settimeout(5)
    relay = Relay(relay_host, max_flows=1)
    first, second = client_socket(relay_host, "198.51.100.10"), client_socket(relay_host, "198.51.100.10")
    evicted = relay.forward(first, b"one")
    _, asker = backend.recvfrom(100)
    backend.sendto(b"late", asker)
    relay.reply_waiting(evicted)
    sock = evicted.socket

    relay.forward(second, b"two")  # the flow table holds one flow: the first one goes

    assert evicted.socket is None
    assert sock is not None
    assert sock.fileno() == -1
    assert relay.machine.counters.reply_dropped == {"reply-unmatched": 1}
    first.settimeout(0.2)
    with pytest.raises(TimeoutError):
        first.recvfrom(100)  # never sent anywhere


def test_a_burst_of_replies_waits_in_the_flow_socket_and_every_one_is_relayed(relay_host: Lab) -> None:
    # 1500 replies arrive while the engine is busy elsewhere (here: not reading at all): the flow
    # socket's queue holds them (the default 208 KiB would hold about 250) and each one is relayed.
    backend = relay_host["backend"].udp_socket("192.0.2.2", 5353)
    backend.settimeout(5)
    relay = Relay(relay_host)
    client = client_socket(relay_host, "198.51.100.10")
    set_receive_buffer(client, 4 << 20)
    flow = relay.forward(client, b"ask")
    _, asker = backend.recvfrom(100)

    for serial in range(1500):
        backend.sendto(serial.to_bytes(2, "big") + bytes(62), asker)
    relay.replies_handled(flow, 1500)

    assert (relay.machine.counters.relayed, relay.machine.counters.reply_dropped) == (1500, {})
    received = {client.recv(100)[:2] for _ in range(1500)}
    assert len(received) == 1500
