"""Relay mode with one reply socket (`--reply relay --reply-tproxy PORT`) end to end, under
systemd-socket-activate: the host steers the backend's replies with nftables `tproxy` (netlab.lab.tproxy)
to one socket bound to PORT, which reads each with its client (IP_ORIGDSTADDR); the forwarder relays it
from the listening socket, from the address the client asked, and holds no socket per client at all.

    client 198.51.100.10 2001:db8:1::10 --- 198.51.100.1 198.51.100.2 2001:db8:1::1 [host: forwarder]
    [host] 192.0.2.1 2001:db8:2::1 --- 192.0.2.2 2001:db8:2::2 backend (answers on 5353, not 53)

No relay policy rule (`from BACKEND ... lookup 100`) is installed here: only the steering, so a reply can
reach the client only through the reply socket. The host does not forward (ip_forward=0).
"""

import functools
import os
import socket
import time

import pytest
from e2e_helpers import serve_in_thread, status_has
from test_e2e_capabilities import no_capability_left
from test_e2e_port_ranges import range_listener
from test_e2e_relay import RELAY, client_socket, relay_deployment, start_answering

from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.destination import Destination
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import Settings
from forwarder.io.engine import Engine
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.io.reply_socket import open_reply_socket
from forwarder.io.sockets import set_receive_buffer
from forwarder.service.notify import Notifier
from netlab import Lab, start_forwarder
from netlab.lab import netns
from netlab.lab.tproxy import steer
from netlab.lab.wait import wait_until
from netlab.service.relay import install_relay_tproxy, route_backend_errors
from netlab.topology.shipped import dual_stack

pytestmark = pytest.mark.privileged

REPLY_PORT = 27999
TPROXY = [*RELAY, "--reply-tproxy", str(REPLY_PORT)]
BACKENDS = {4: "192.0.2.2", 6: "2001:db8:2::2"}
BACKENDS_HOST_SIDE = {4: "192.0.2.1", 6: "2001:db8:2::1"}  # the host's address toward the backends


def steer_replies(lab: Lab, version: int, port: int = 5353) -> None:
    """The host's steering of the backend's replies from `port` to the reply socket."""
    steer(lab["host"], version=version, to_port=REPLY_PORT, saddr=BACKENDS[version], sports=port)


@pytest.fixture
def tproxy_lab(lab: Lab) -> Lab:
    lab.build(relay_deployment())
    lab["host"].sysctl("net.ipv4.ip_forward", "0")
    start_answering(lab["backend"], "192.0.2.2", 5353)
    start_answering(lab["backend"], "2001:db8:2::2", 5353)
    steer_replies(lab, 4)
    steer_replies(lab, 6)
    return lab


def descriptors(pid: int) -> int:
    """How many file descriptors process `pid` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


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
def test_a_steered_reply_reaches_the_client_from_the_address_it_asked(
    tproxy_lab: Lab, *, listen: str, destination: str, client: str, asked: tuple[object, ...]
) -> None:
    forwarder = start_forwarder(tproxy_lab["host"], [listen], [destination], args=TPROXY)
    sock = client_socket(tproxy_lab, client)

    sock.sendto(b"ping", asked[:2])
    answer, source = sock.recvfrom(65535)

    assert (answer, source) == (f"seen={client}:{sock.getsockname()[1]};ping".encode(), asked)
    forwarder.wait_status(status_has("1 replies relayed"))


def test_one_dual_stack_reply_socket_serves_an_ipv4_and_an_ipv6_backend(tproxy_lab: Lab) -> None:
    forwarder = start_forwarder(
        tproxy_lab["host"],
        ["198.51.100.1:53", "[2001:db8:1::1]:53"],
        ["192.0.2.2:5353", "[2001:db8:2::2]:5353"],
        args=TPROXY,
    )
    four, six = client_socket(tproxy_lab, "198.51.100.10"), client_socket(tproxy_lab, "2001:db8:1::10")

    for sock, asked in (
        (four, ("198.51.100.1", 53)),
        (six, ("2001:db8:1::1", 53)),
        (four, ("198.51.100.1", 53)),
    ):
        sock.sendto(b"ask", asked)
        assert sock.recvfrom(100)[1][:2] == asked
    forwarder.wait_status(status_has("3 replies relayed, 0 replies dropped"))
    assert "tproxy:" not in forwarder.process.output()  # the mark routing of both families is there


def test_a_wildcard_listener_answers_from_whichever_of_the_hosts_addresses_the_client_asked(
    tproxy_lab: Lab,
) -> None:
    start_forwarder(tproxy_lab["host"], ["0.0.0.0:53"], ["192.0.2.2:5353"], args=TPROXY)
    sock = client_socket(tproxy_lab, "198.51.100.10")
    sock.sendto(b"start", ("198.51.100.1", 53))  # queued before IP_PKTINFO: from the primary address
    assert sock.recvfrom(100)[1] == ("198.51.100.1", 53)

    for asked in ("198.51.100.2", "198.51.100.1", "198.51.100.2"):
        sock.sendto(asked.encode(), (asked, 53))
        answer, source = sock.recvfrom(65535)
        assert (answer.rpartition(b";")[2], source) == (asked.encode(), (asked, 53))


def test_a_client_with_source_port_53_gets_its_reply_on_port_53(tproxy_lab: Lab) -> None:
    # No flow socket is bound next to the listener: the reply socket takes the reply to 198.51.100.10:53.
    forwarder = start_forwarder(tproxy_lab["host"], ["0.0.0.0:53"], ["192.0.2.2:5353"], args=TPROXY)
    sock = client_socket(tproxy_lab, "198.51.100.10", 53)

    sock.sendto(b"from 53", ("198.51.100.1", 53))

    assert sock.recvfrom(65535) == (b"seen=198.51.100.10:53;from 53", ("198.51.100.1", 53))
    forwarder.wait_status(status_has("since start 1 forwarded, 0 dropped, 1 replies relayed"))


def test_a_client_asking_two_listeners_of_one_backend_is_answered_from_each_address_it_asks(
    tproxy_lab: Lab,
) -> None:
    forwarder = start_forwarder(
        tproxy_lab["host"],
        ["198.51.100.1:53", "198.51.100.2:53"],
        ["192.0.2.2:5353", "192.0.2.2:5353"],
        args=TPROXY,
    )
    sock = client_socket(tproxy_lab, "198.51.100.10")

    for asked in ("198.51.100.1", "198.51.100.2", "198.51.100.1", "198.51.100.2"):
        sock.sendto(asked.encode(), (asked, 53))
        answer, source = sock.recvfrom(100)
        assert (answer.rpartition(b";")[2], source) == (asked.encode(), (asked, 53))
    forwarder.wait_status(status_has("4 replies relayed, 0 replies dropped"))
    forwarder.wait_status(status_has("1 flows"))


def test_the_metrics_file_counts_relayed_replies(tproxy_lab: Lab) -> None:
    path = tproxy_lab.workdir / "forwarder.prom"
    forwarder = start_forwarder(
        tproxy_lab["host"],
        ["198.51.100.1:53"],
        ["192.0.2.2:5353"],
        args=[*TPROXY, "--metrics-file", str(path)],
    )
    sock = client_socket(tproxy_lab, "198.51.100.10")
    for payload in (b"one", b"two"):
        sock.sendto(payload, ("198.51.100.1", 53))
        sock.recvfrom(100)
    forwarder.wait_status(status_has("2 replies relayed, 0 replies dropped"))

    assert 'transparent_udp_forwarder_replies_relayed_total{listen="198.51.100.1:53"} 2\n' in path.read_text()


@pytest.mark.parametrize(
    ("listen", "destination", "client", "host"),
    [
        ("198.51.100.1:53", "192.0.2.2:5353", "198.51.100.10", "198.51.100.1"),
        ("[2001:db8:1::1]:53", "[2001:db8:2::2]:5353", "2001:db8:1::10", "2001:db8:1::1"),
    ],
    ids=["ipv4", "ipv6"],
)
def test_a_3000_byte_reply_arrives_intact_in_fragments_without_a_reassembly_rule(
    tproxy_lab: Lab, *, listen: str, destination: str, client: str, host: str
) -> None:
    # No enable_reassembly(): the nft tproxy expression loads the kernel's defragmentation itself, so the
    # rule sees the reassembled reply and its ports.
    forwarder = start_forwarder(tproxy_lab["host"], [listen], [destination], args=TPROXY)
    sock = client_socket(tproxy_lab, client)
    request = b"size=3000;" + bytes(range(256)) * 5 + b"x" * 183  # 1473 bytes: fragmented at MTU 1500

    sock.sendto(request, (host, 53))
    answer, source = sock.recvfrom(65535)

    expected = f"seen={client}:{sock.getsockname()[1]};".encode() + request
    assert (len(answer), answer, source[:2]) == (3000, (expected * 3)[:3000], (host, 53))
    forwarder.wait_status(status_has("1 replies relayed, 0 dropped"))


def test_the_backends_own_traffic_is_still_routed_normally(tproxy_lab: Lab) -> None:
    tproxy_lab["host"].sysctl("net.ipv4.ip_forward", "1")
    tproxy_lab["host"].sysctl("net.ipv6.conf.all.forwarding", "1")
    start_forwarder(tproxy_lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=TPROXY)
    for address in ("198.51.100.10", "2001:db8:1::10"):  # from another port than the replies': forwarded
        receiver = client_socket(tproxy_lab, address, 7000)
        backend = tproxy_lab["backend"].open_socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        backend.sendto(b"own lookup", (address, 7000))
        assert receiver.recvfrom(100)[0] == b"own lookup"
    sock = client_socket(tproxy_lab, "198.51.100.10")
    sock.sendto(b"ping", ("198.51.100.1", 53))
    assert sock.recvfrom(100)[1] == ("198.51.100.1", 53)


def test_a_reply_to_an_evicted_flow_is_counted_unmatched_and_sent_nowhere(lab: Lab) -> None:
    lab.build(relay_deployment())
    steer_replies(lab, 4)
    backend = lab["backend"].udp_socket("192.0.2.2", 5353)
    backend.settimeout(5)
    forwarder = start_forwarder(
        lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=[*TPROXY, "--max-flows", "1"]
    )
    first, second = client_socket(lab, "198.51.100.10"), client_socket(lab, "198.51.100.10")
    first.sendto(b"one", ("198.51.100.1", 53))
    _, first_asker = backend.recvfrom(100)
    second.sendto(b"two", ("198.51.100.1", 53))  # the table holds one flow: the first one goes
    _, second_asker = backend.recvfrom(100)

    backend.sendto(b"late", first_asker)
    backend.sendto(b"current", second_asker)

    assert second.recvfrom(100) == (b"current", ("198.51.100.1", 53))
    forwarder.wait_status(status_has("1 replies relayed, 1 dropped (reply-unmatched 1)"))
    first.settimeout(0.2)
    with pytest.raises(TimeoutError):
        first.recvfrom(100)


@pytest.mark.parametrize(
    ("version", "listen", "backend", "client", "asked"),
    [
        (4, "198.51.100.1:53", "192.0.2.2", "198.51.100.10", ("198.51.100.1", 53)),
        (6, "[2001:db8:1::1]:53", "2001:db8:2::2", "2001:db8:1::10", ("2001:db8:1::1", 53)),
    ],
    ids=["ipv4", "ipv6"],
)
def test_datagrams_to_a_stopped_backend_are_counted_as_backend_unreachable_once_each(
    lab: Lab, *, version: int, listen: str, backend: str, client: str, asked: tuple[str, int]
) -> None:
    # With no flow socket, the raw send socket's error queue gets the backend's ICMP errors, which the
    # host delivers to itself (the README's ICMP recipe), and counts them.
    lab.build(relay_deployment())
    steer_replies(lab, version)
    route_backend_errors(lab["host"], [backend])
    target = f"[{backend}]:5353" if version == 6 else f"{backend}:5353"
    forwarder = start_forwarder(lab["host"], [listen], [target], args=TPROXY)
    sock = client_socket(lab, client)  # nothing listens on the backend's 5353
    for _ in range(3):
        sock.sendto(b"anyone?", asked)

    forwarder.wait_status(status_has("since start 3 forwarded, 0 dropped"))
    forwarder.wait_status(status_has(", 3 ICMP errors;"))
    assert forwarder.stop() == 0
    assert all(", 4 ICMP errors" not in value for value in forwarder.notify.values("STATUS"))
    assert f"ICMP error (backend-unreachable) from {backend}" in forwarder.process.output()


@pytest.mark.parametrize(
    ("iifname", "relayed"), [("to-backend", 2), (None, 3)], ids=["iifname", "no-iifname"]
)
def test_a_reply_spoofed_from_the_clients_side_is_relayed_only_without_the_interface_match(
    lab: Lab, iifname: str | None, relayed: int
) -> None:
    # The README's recipe matches the interface toward the backend: a datagram from the clients' side with
    # the backend's address and port as its source must not reach a client through the reply socket.
    topology = relay_deployment().route("host", "203.0.113.0/24", via="198.51.100.10")
    lab.build(topology)
    lab["host"].sysctl("net.ipv4.ip_forward", "0")
    start_answering(lab["backend"], "192.0.2.2", 5353)
    steer(lab["host"], version=4, to_port=REPLY_PORT, saddr="192.0.2.2", sports=5353, iifname=iifname)
    forwarder = start_forwarder(lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=TPROXY)
    client = lab["client"]
    client.send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=53, payload=b"ask")
    forwarder.wait_status(status_has("since start 1 forwarded, 0 dropped, 1 replies relayed"))

    client.send_udp(src="192.0.2.2", dst="203.0.113.7", sport=5353, dport=4242, payload=b"spoofed")
    client.send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=53, payload=b"ask again")

    forwarder.wait_status(status_has(f"since start 2 forwarded, 0 dropped, {relayed} replies relayed"))
    assert forwarder.stop() == 0
    assert all(f"{relayed + 1} replies relayed" not in value for value in forwarder.notify.values("STATUS"))


def test_no_capability_is_left_while_it_relays_replies_of_new_clients(tproxy_lab: Lab) -> None:
    forwarder = start_forwarder(
        tproxy_lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=[*TPROXY, "--log-level", "debug"]
    )
    first = client_socket(tproxy_lab, "198.51.100.10")
    first.sendto(b"first", ("198.51.100.1", 53))
    assert first.recvfrom(100)[1] == ("198.51.100.1", 53)
    forwarder.wait_ready()

    assert no_capability_left(forwarder)
    second = client_socket(tproxy_lab, "198.51.100.10")
    second.sendto(b"second", ("198.51.100.1", 53))
    assert second.recvfrom(100) == (
        f"seen=198.51.100.10:{second.getsockname()[1]};second".encode(),
        ("198.51.100.1", 53),
    )
    assert "dropped every capability" in forwarder.process.output()


def test_without_the_mark_rule_the_forwarder_warns_at_start_naming_what_to_add(lab: Lab) -> None:
    lab.build(relay_deployment())
    start_answering(lab["backend"], "192.0.2.2", 5353)
    steer(lab["host"], version=4, to_port=REPLY_PORT, saddr="192.0.2.2", sports=5353, rule=False)
    forwarder = start_forwarder(lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=TPROXY)
    client_socket(lab, "198.51.100.10").sendto(b"start", ("198.51.100.1", 53))
    forwarder.wait_ready()

    warnings = [line for line in forwarder.process.output().splitlines() if "WARNING" in line]
    assert len(warnings) == 1, forwarder.process.output()
    assert "--reply-tproxy 27999: no IPv4 policy rule matches a firewall mark" in warnings[0]
    assert "`ip rule add fwmark 1 lookup 100`" in warnings[0]
    assert "would not reach" not in forwarder.process.output()  # the flow sockets' check does not apply


# --- a backend on the host itself (`--net=host`): its replies come back in through lo -----------------------

LOCAL = {4: "127.0.0.1", 6: "::1"}


@pytest.mark.parametrize(
    ("backend", "listen", "destination", "client", "asked"),
    [
        ("127.0.0.1", "198.51.100.1:53", "127.0.0.1:5353", "198.51.100.10", ("198.51.100.1", 53)),
        ("::1", "[2001:db8:1::1]:53", "[::1]:5353", "2001:db8:1::10", ("2001:db8:1::1", 53, 0, 0)),
        ("127.0.0.1", "[::]:53", "127.0.0.1:5353", "198.51.100.10", ("198.51.100.1", 53)),
        ("192.0.2.1", "198.51.100.1:53", "192.0.2.1:5353", "198.51.100.10", ("198.51.100.1", 53)),
        ("2001:db8:2::1", "[::]:53", "[2001:db8:2::1]:5353", "2001:db8:1::10", ("2001:db8:1::1", 53, 0, 0)),
    ],
    ids=["ipv4", "ipv6", "dual-stack-ipv4-client", "ipv4-host-address", "ipv6-host-address"],
)
def test_a_backend_on_the_host_itself_answers_each_client_through_the_reply_socket(
    lab: Lab, *, backend: str, listen: str, destination: str, client: str, asked: tuple[object, ...]
) -> None:
    # The README's local form: the loopback rule sends the backend's replies out through lo and back in,
    # where the tproxy rule on lo hands them to the reply socket. No fwmark rule is installed, and none is
    # needed: the start-up check asks for the loopback rule instead, and finds it. A backend on one of the
    # host's own addresses takes the same rules with that address.
    lab.build(relay_deployment())
    lab["host"].sysctl("net.ipv4.ip_forward", "0")
    start_answering(lab["host"], backend, 5353)
    install_relay_tproxy(lab["host"], backend, 5353, REPLY_PORT, on_host=True)
    forwarder = start_forwarder(lab["host"], [listen], [destination], args=TPROXY)
    clients = [client_socket(lab, client) for _ in range(3)]

    for serial, sock in enumerate(clients):
        sock.sendto(b"local %d" % serial, asked[:2])
    answers = [sock.recvfrom(65535) for sock in clients]

    assert answers == [
        (f"seen={client}:{sock.getsockname()[1]};local {serial}".encode(), asked)
        for serial, sock in enumerate(clients)
    ]
    forwarder.wait_status(status_has("3 replies relayed, 0 replies dropped"))
    assert "WARNING" not in forwarder.process.output()


@pytest.mark.parametrize(
    ("version", "destination", "listen", "asked"),
    [
        (4, "127.0.0.1:5353", "198.51.100.1:53", ("198.51.100.1", 53)),
        (6, "[::1]:5353", "[2001:db8:1::1]:53", ("2001:db8:1::1", 53)),
    ],
    ids=["ipv4", "ipv6"],
)
def test_without_the_loopback_rule_a_backend_on_the_host_is_warned_of_at_start_naming_the_rule(
    lab: Lab, version: int, destination: str, listen: str, asked: tuple[str, int]
) -> None:
    lab.build(relay_deployment())
    start_answering(lab["host"], LOCAL[version], 5353)
    install_relay_tproxy(lab["host"], LOCAL[version], 5353, REPLY_PORT, rule=False)
    forwarder = start_forwarder(lab["host"], [listen], [destination], args=TPROXY)
    sock = client_socket(lab, "198.51.100.10" if version == 4 else "2001:db8:1::10")
    sock.sendto(b"start", asked)
    forwarder.wait_ready()

    warnings = [line for line in forwarder.process.output().splitlines() if "WARNING" in line]
    ip = "ip" if version == 4 else "ip -6"
    assert len(warnings) == 1, forwarder.process.output()
    assert (
        f"--reply-tproxy {REPLY_PORT}: replies from {destination}, a backend on this host, would not come "
        "back in through lo, where the tproxy rule takes them: the kernel " in warnings[0]
    )
    assert f"`{ip} rule add from {LOCAL[version]} iif lo ipproto udp sport 5353 lookup 100`" in warnings[0]
    assert "firewall mark" not in warnings[0]  # a reply looped through lo needs no mark routing
    sock.settimeout(0.5)
    with pytest.raises(TimeoutError):  # indeed: the backend's answer never reaches the client
        sock.recvfrom(100)


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_the_hosts_own_unconnected_client_of_a_local_backend_still_gets_its_answers(
    lab: Lab, version: int
) -> None:
    # tproxy takes a datagram for an unconnected socket too: without `fib daddr type != local` the answer
    # to a resolver on the host asking 127.0.0.1 would go to the reply socket, and be dropped there.
    lab.build(relay_deployment())
    host = lab["host"]
    start_answering(host, LOCAL[version], 5353)
    install_relay_tproxy(host, LOCAL[version], 5353, REPLY_PORT)
    destination = "127.0.0.1:5353" if version == 4 else "[::1]:5353"
    listen = "198.51.100.1:53" if version == 4 else "[2001:db8:1::1]:53"
    forwarder = start_forwarder(host, [listen], [destination], args=TPROXY)
    remote = client_socket(lab, "198.51.100.10" if version == 4 else "2001:db8:1::10")
    remote.sendto(b"remote", (listen.rpartition(":")[0].strip("[]"), 53))
    assert remote.recvfrom(100)[0].endswith(b";remote")

    for source in (LOCAL[version], BACKENDS_HOST_SIDE[version]):  # asking from loopback, and from eth1
        own = host.udp_socket(source, 0)
        own.settimeout(5)
        own.sendto(b"own", (LOCAL[version], 5353))
        answer, sender = own.recvfrom(100)
        assert (answer, sender[:2]) == (
            f"seen={source}:{own.getsockname()[1]};own".encode(),
            (LOCAL[version], 5353),
        )
    forwarder.wait_status(status_has("1 replies relayed, 0 replies dropped"))


def test_a_reply_port_another_socket_holds_exits_71_naming_it(lab: Lab) -> None:
    lab.build(relay_deployment())
    lab["host"].udp_socket("0.0.0.0", REPLY_PORT)
    forwarder = start_forwarder(lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=TPROXY)
    client_socket(lab, "198.51.100.10").sendto(b"start", ("198.51.100.1", 53))

    assert forwarder.process.wait(10) == 71
    assert (
        f"--reply-tproxy {REPLY_PORT}: cannot bind the reply socket to '0.0.0.0' port {REPLY_PORT}: "
        "Address already in use" in forwarder.process.output()
    )


def test_a_port_ranges_replies_come_through_the_reply_socket_each_from_the_port_asked(lab: Lab) -> None:
    # Each port of the range goes to its own backend port (5300 + offset): the reply socket finds each
    # reply's flow by the backend port it came from, and the range relays it from the port the client asked.
    lab.build(dual_stack())
    host = lab["host"]
    host.sysctl("net.ipv4.ip_forward", "0")
    for port in (5300, 5342, 5399):
        serve_in_thread(
            lab, lab["backend"].udp_socket("192.0.2.2", port), lambda data, peer: b"answer:" + data
        )
    steer(host, version=4, to_port=REPLY_PORT, saddr="192.0.2.2", sports=(5300, 5399))
    held = range_listener(lab, 4, 27000, (27000, 27099))
    forwarder = start_forwarder(
        host, [], ["27000-27099@192.0.2.2:5300-5399"], sockets=held, args=[*TPROXY, "--log-level", "debug"]
    )
    client = lab["client"].udp_socket("198.51.100.10", 4246)
    client.settimeout(5)

    answers = []
    for port in (27042, 27099, 27000, 27042):
        client.sendto(str(port).encode(), ("198.51.100.1", port))
        answers.append(client.recvfrom(100))

    assert answers == [
        (f"answer:{port}".encode(), ("198.51.100.1", port)) for port in (27042, 27099, 27000, 27042)
    ]
    forwarder.wait_status(
        status_has("since start 4 forwarded, 0 dropped, 4 replies relayed, 0 replies dropped")
    )


# --- many clients: every reply arrives, and no descriptor per client ---------------------------------------

CLIENTS = 1000
REPLIES = 3  # per client, all sent before the first is read
ASKED = ("198.51.100.1", 53)


def test_a_burst_of_replies_to_1000_clients_arrives_complete_and_each_at_its_own_client(lab: Lab) -> None:
    lab.build(relay_deployment())
    lab["host"].sysctl("net.ipv4.ip_forward", "0")
    steer_replies(lab, 4)
    backend = lab["backend"].udp_socket("192.0.2.2", 5353)
    backend.settimeout(5)
    set_receive_buffer(backend, 4 << 20)
    forwarder = start_forwarder(
        lab["host"], ["198.51.100.1:53"], ["192.0.2.2:5353"], args=[*TPROXY, "--max-flows", "4096"]
    )
    clients = [client_socket(lab, "198.51.100.10") for _ in range(CLIENTS)]
    for client in clients:
        lab.defer(client.close)
    clients[0].sendto(b"ask", ASKED)  # starts the forwarder
    forwarder.wait_ready()
    askers = [backend.recvfrom(100)[1]]
    after_one = descriptors(forwarder.process.pid)
    for start in range(1, CLIENTS, 100):  # in steps the listener's queue holds
        for client in clients[start : start + 100]:
            client.sendto(b"ask", ASKED)
        askers += [backend.recvfrom(100)[1] for _ in clients[start : start + 100]]
    assert sorted(askers) == sorted(client.getsockname() for client in clients)

    # No socket per client: 1,000 flows hold no more descriptors than one.
    forwarder.wait_status(status_has(f"; {CLIENTS} flows."))
    assert descriptors(forwarder.process.pid) == after_one

    for serial in range(REPLIES):
        for asker in askers:
            backend.sendto(b"to %d;%d" % (asker[1], serial), asker)
    for client in clients:
        port = client.getsockname()[1]
        arrived = [client.recvfrom(100) for _ in range(REPLIES)]
        assert sorted(arrived) == [(b"to %d;%d" % (port, serial), ASKED) for serial in range(REPLIES)]
    forwarder.wait_status(status_has(f"{CLIENTS * REPLIES} replies relayed, 0 replies dropped"))


# --- the engine in the host, fed by hand: what happens to each reply is exact, not timing -----------------


class Steered:
    """The engine and machine with a reply socket in the host node, one route, fed datagrams by hand. The
    forward direction goes through per-client sockets here (no raw socket is handed in), unconnected, so
    the steering still takes the replies."""

    def __init__(
        self,
        lab: Lab,
        *,
        batched: bool = True,
        buffer_size: int = 65536,
        listeners: tuple[str, ...] = ("198.51.100.1",),
        max_flows: int = 4096,
        pktinfo: bool = False,
    ) -> None:
        lab.build(relay_deployment())
        steer_replies(lab, 4)
        self.lab = lab
        self.host = lab["host"]
        self.backend = lab["backend"].udp_socket("192.0.2.2", 5353)
        self.backend.settimeout(5)
        self.routes = []
        for address in listeners:
            listener = self.host.udp_socket(address, 53)
            listener.setblocking(False)
            destination = Destination(socket.AF_INET, "192.0.2.2", 5353)
            route = Route(ListeningSocket(listener, f"dns-{address}"), destination, pktinfo=pktinfo)
            self.routes.append(route)
        self.route = self.routes[0]
        self.machine = ForwardingMachine(
            Settings(reply="relay", reply_tproxy=REPLY_PORT, max_flows=max_flows)
        )
        reply_socket = netns.run_in(
            self.host.namespace, lambda: open_reply_socket([socket.AF_INET], REPLY_PORT)
        )
        lab.defer(reply_socket.close)
        self.engine = Engine(
            self.routes, Notifier({}), self.machine, reply_socket=reply_socket, buffer_size=buffer_size
        )
        lab.defer(self.engine.close)
        if not batched:  # as where libc lacks recvmmsg and sendmmsg
            self.engine._replies = None

    def ask(
        self, client: socket.socket, route: Route | None = None, local: str | None = None
    ) -> tuple[str, int]:
        """Forward a datagram as if `client` had sent it (to `route`'s listener, the first by default;
        to the host's address `local`, on a wildcard one); return where the backend saw it come from."""
        route = self.route if route is None else route
        raw = sockaddr_bytes(socket.AF_INET, client.getsockname())
        asked = None if local is None else socket.inet_aton(local)
        action = self.machine.receive(route.path, raw, 3, 0, time.monotonic(), local=asked)
        netns.run_in(
            self.host.namespace,
            functools.partial(self.engine.execute, route, action, memoryview(b"ask")),
        )
        return tuple(self.backend.recvfrom(100)[1])

    def replies_handled(self, count: int) -> None:
        """Let the engine read the reply socket until `count` replies were relayed or dropped."""

        def handled() -> bool:
            netns.run_in(self.host.namespace, lambda: self.engine.steered_pass(time.monotonic()))
            counters = self.machine.counters
            return counters.relayed + sum(counters.reply_dropped.values()) >= count

        wait_until(handled, f"{count} replies handled", 5)


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvmsg"])
def test_the_reply_socket_relays_each_reply_to_its_own_client_batched_or_one_by_one(
    lab: Lab, batched: bool
) -> None:
    # Without recvmmsg/sendmmsg in libc the engine reads the reply socket one recvmsg at a time; both ways
    # find each reply's client in its original destination.
    steered = Steered(lab, batched=batched)
    clients = [client_socket(lab, "198.51.100.10") for _ in range(3)]
    askers = [steered.ask(client) for client in clients]

    for asker in askers:
        steered.backend.sendto(b"to %d" % asker[1], asker)
    steered.replies_handled(len(clients))

    for client in clients:
        assert client.recvfrom(100) == (b"to %d" % client.getsockname()[1], ("198.51.100.1", 53))
    assert (steered.machine.counters.relayed, steered.machine.counters.reply_dropped) == (3, {})


@pytest.mark.parametrize("batched", [True, False], ids=["recvmmsg", "recvmsg"])
def test_a_steered_reply_larger_than_the_receive_buffer_is_counted_not_cut(lab: Lab, batched: bool) -> None:
    steered = Steered(lab, batched=batched, buffer_size=1024)
    client = client_socket(lab, "198.51.100.10")
    asker = steered.ask(client)

    steered.backend.sendto(b"x" * 1200, asker)  # one packet: no fragments
    steered.backend.sendto(b"fits", asker)
    steered.replies_handled(2)

    assert client.recvfrom(100) == (b"fits", ("198.51.100.1", 53))
    client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        client.recvfrom(100)
    counters = steered.machine.counters
    assert (counters.relayed, counters.reply_dropped) == (1, {"reply-truncated": 1})


def test_one_batch_of_replies_for_two_listeners_leaves_each_from_the_listener_its_client_asked(
    lab: Lab,
) -> None:
    # Replies of one recvmmsg going to two listeners cannot leave in one run: each goes from its own.
    steered = Steered(lab, listeners=("198.51.100.1", "198.51.100.2"))
    first, second = client_socket(lab, "198.51.100.10"), client_socket(lab, "198.51.100.10")
    askers = [steered.ask(first, steered.routes[0]), steered.ask(second, steered.routes[1])]

    for round_number in range(2):  # the keys unknown, then learned
        for serial in range(3):
            for asker in askers:
                steered.backend.sendto(b"%d-%d" % (round_number, serial), asker)
        steered.replies_handled(6 * (round_number + 1))
        for serial in range(3):
            assert first.recvfrom(100) == (b"%d-%d" % (round_number, serial), ("198.51.100.1", 53))
            assert second.recvfrom(100) == (b"%d-%d" % (round_number, serial), ("198.51.100.2", 53))
    assert (steered.machine.counters.relayed, steered.machine.counters.reply_dropped) == (12, {})


def test_a_late_reply_to_an_evicted_flow_whose_replies_were_relayed_is_counted_unmatched(lab: Lab) -> None:
    # The flow's replies were matched by a learned key: the key goes with the flow.
    steered = Steered(lab, max_flows=1)
    first, second = client_socket(lab, "198.51.100.10"), client_socket(lab, "198.51.100.10")
    first_asker = steered.ask(first)
    steered.backend.sendto(b"early", first_asker)
    steered.replies_handled(1)
    assert first.recvfrom(100) == (b"early", ("198.51.100.1", 53))

    second_asker = steered.ask(second)  # the table holds one flow: the first one goes
    steered.backend.sendto(b"late", first_asker)
    steered.backend.sendto(b"current", second_asker)
    steered.replies_handled(3)

    assert second.recvfrom(100) == (b"current", ("198.51.100.1", 53))
    counters = steered.machine.counters
    assert (counters.relayed, counters.reply_dropped) == (2, {"reply-unmatched": 1})
    first.settimeout(0.2)
    with pytest.raises(TimeoutError):
        first.recvfrom(100)


def test_one_batch_of_replies_on_a_wildcard_listener_leaves_each_from_the_address_its_client_asked(
    lab: Lab,
) -> None:
    # Each message of the run carries its own IP_PKTINFO source: the address its client sent to.
    steered = Steered(lab, listeners=("0.0.0.0",), pktinfo=True)
    clients = [client_socket(lab, "198.51.100.10") for _ in range(4)]
    asked = ["198.51.100.1", "198.51.100.2", "198.51.100.2", "198.51.100.1"]
    askers = [steered.ask(client, local=local) for client, local in zip(clients, asked, strict=True)]

    for round_number in range(3):  # the keys and the sources' control messages unknown, then known
        for asker in askers:
            steered.backend.sendto(b"round %d" % round_number, asker)
        steered.replies_handled(4 * (round_number + 1))
        for client, local in zip(clients, asked, strict=True):
            assert client.recvfrom(100) == (b"round %d" % round_number, (local, 53))
    assert (steered.machine.counters.relayed, steered.machine.counters.reply_dropped) == (12, {})


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_the_hosts_own_unconnected_client_of_a_remote_backend_still_gets_its_answers(
    lab: Lab, version: int
) -> None:
    # The same theft as with a backend on the host: a program on the host asking the backend's service port
    # from an unconnected socket waits for an answer the recipe's tproxy rule matches (the backend's address
    # and port, arriving toward the backends); tproxy hands a datagram for an unconnected socket to the
    # reply socket, where no flow has it (reply-unmatched). `fib daddr type != local` leaves it alone.
    lab.build(relay_deployment())
    lab["host"].sysctl("net.ipv4.ip_forward", "0")
    host = lab["host"]
    start_answering(lab["backend"], BACKENDS[version], 5353)
    install_relay_tproxy(host, BACKENDS[version], 5353, REPLY_PORT, interface="to-backend")
    listen = "198.51.100.1:53" if version == 4 else "[2001:db8:1::1]:53"
    destination = "192.0.2.2:5353" if version == 4 else "[2001:db8:2::2]:5353"
    forwarder = start_forwarder(host, [listen], [destination], args=TPROXY)
    remote = client_socket(lab, "198.51.100.10" if version == 4 else "2001:db8:1::10")
    remote.sendto(b"remote", (listen.rpartition(":")[0].strip("[]"), 53))
    assert remote.recvfrom(100)[0].endswith(b";remote")

    own = host.udp_socket(BACKENDS_HOST_SIDE[version], 0)
    own.settimeout(5)
    own.sendto(b"own", (BACKENDS[version], 5353))
    answer, sender = own.recvfrom(100)
    assert (answer, sender[:2]) == (
        f"seen={BACKENDS_HOST_SIDE[version]}:{own.getsockname()[1]};own".encode(),
        (BACKENDS[version], 5353),
    )
    forwarder.wait_status(status_has("1 replies relayed, 0 replies dropped"))
