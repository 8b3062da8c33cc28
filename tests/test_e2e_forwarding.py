"""End-to-end forwarding under systemd-socket-activate: IPv4, IPv6, a dual-stack listener, several and
named sockets, payload sizes up to the protocol maximum, held flows that must not steal replies, host-local
clients, and per-errno drops that never stop the loop.

Topology and address plan: see fixtures/topologies/dual-stack.toml (IPv4 tests use the seed deployment).
"""

import re
import socket
from pathlib import Path

import pytest
from e2e_helpers import send_path, start_echo, status_has

from netlab import Lab, load_topology, start_forwarder
from netlab.lab.nft import apply_ruleset
from netlab.service.procnet import udp_sockets_bound
from netlab.service.replypath import enable_reply_path
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged
__all__ = ["send_path"]  # the fixture: every test that sends runs on both send paths

LISTEN = "198.51.100.1:27000"
FAST_STATUS = ["--stats-interval", "0.2"]


def backend_socket(lab: Lab, address: str, port: int = 27000) -> socket.socket:
    sock = lab["backend"].udp_socket(address, port)
    sock.settimeout(10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sock


def client_socket(lab: Lab, address: str) -> socket.socket:
    sock = lab["client"].udp_socket(address, 0)
    sock.settimeout(10)
    return sock


def test_ipv6_backend_sees_the_client_address_and_port(lab: Lab, send_path: list[str]) -> None:
    lab.build(load_topology("dual-stack"))
    backend = backend_socket(lab, "2001:db8:2::2")
    forwarder = start_forwarder(lab["host"], ["[2001:db8:51::1]:27000"], ["[2001:db8:2::2]"], args=send_path)
    client = client_socket(lab, "2001:db8:51::10")

    client.sendto(b"six", ("2001:db8:51::1", 27000))

    payload, source = backend.recvfrom(65535)
    assert (payload, source[:2]) == (b"six", client.getsockname()[:2])
    forwarder.wait_ready()


def test_dual_stack_listener_presents_ipv4_clients_as_plain_ipv4_and_drops_ipv6_ones(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(load_topology("dual-stack"))
    backend = backend_socket(lab, "192.0.2.2")
    forwarder = start_forwarder(
        lab["host"], ["[::]:27000"], ["192.0.2.2:27000"], args=[*FAST_STATUS, *send_path]
    )
    v4_client = client_socket(lab, "198.51.100.10")
    v6_client = client_socket(lab, "2001:db8:51::10")

    v4_client.sendto(b"four", ("198.51.100.1", 27000))
    assert backend.recvfrom(65535) == (b"four", v4_client.getsockname())
    forwarder.wait_ready()
    v6_client.sendto(b"six", ("2001:db8:51::1", 27000))

    forwarder.notify.wait_for("STATUS", status_has("family-mismatch 1"), timeout=10)
    backend.settimeout(0.5)
    with pytest.raises(TimeoutError):
        backend.recvfrom(65535)


def test_several_sockets_each_go_to_their_own_destination_in_order(lab: Lab, send_path: list[str]) -> None:
    lab.build(seed_deployment())
    backends = [backend_socket(lab, "192.0.2.2", port) for port in (27000, 27001)]
    start_forwarder(
        lab["host"], [LISTEN, "198.51.100.1:27001"], ["192.0.2.2:27000", "192.0.2.2:27001"], args=send_path
    )
    client = client_socket(lab, "198.51.100.10")

    client.sendto(b"to-0", ("198.51.100.1", 27000))
    client.sendto(b"to-1", ("198.51.100.1", 27001))

    assert backends[0].recvfrom(65535) == (b"to-0", client.getsockname())
    assert backends[1].recvfrom(65535) == (b"to-1", client.getsockname())


def test_named_sockets_map_by_file_descriptor_name_in_any_order(lab: Lab, send_path: list[str]) -> None:
    lab.build(seed_deployment())
    game, dns = backend_socket(lab, "192.0.2.2", 27015), backend_socket(lab, "192.0.2.2", 5353)
    start_forwarder(
        lab["host"],
        [LISTEN, "198.51.100.1:27001"],
        ["dns=192.0.2.2:5353", "game=192.0.2.2:27015"],
        fdnames=["game", "dns"],
        args=send_path,
    )
    client = client_socket(lab, "198.51.100.10")

    client.sendto(b"game", ("198.51.100.1", 27000))
    client.sendto(b"dns", ("198.51.100.1", 27001))

    assert game.recvfrom(65535) == (b"game", client.getsockname())
    assert dns.recvfrom(65535) == (b"dns", client.getsockname())


@pytest.mark.parametrize(
    ("family", "size"),
    [("v4", 0), ("v4", 1), ("v4", 1472), ("v4", 1473), ("v4", 65507), ("v6", 0), ("v6", 65527)],
)
def test_payloads_up_to_the_protocol_maximum_arrive_intact(
    lab: Lab, send_path: list[str], family: str, size: int
) -> None:
    lab.build(load_topology("dual-stack"))
    if family == "v4":
        client_address, listen, backend_address = "198.51.100.10", LISTEN, "192.0.2.2"
        destination, target = "192.0.2.2:27000", ("198.51.100.1", 27000)
    else:
        client_address, listen, backend_address = "2001:db8:51::10", "[2001:db8:51::1]:27000", "2001:db8:2::2"
        destination, target = "[2001:db8:2::2]:27000", ("2001:db8:51::1", 27000)
    backend = backend_socket(lab, backend_address)
    forwarder = start_forwarder(lab["host"], [listen], [destination], args=send_path)
    client = client_socket(lab, client_address)
    payload = bytes(index % 251 for index in range(size))

    client.sendto(payload, target)  # the kernel fragments what does not fit the 1500 B MTU

    received, source = backend.recvfrom(65536)
    assert (len(received), received == payload) == (size, True)
    assert source[:2] == client.getsockname()[:2]
    forwarder.wait_ready()


def test_replies_reach_the_client_while_a_flow_is_open_whichever_send_path_holds_it(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(seed_deployment())
    start_echo(lab, "192.0.2.2", 27000)
    enable_reply_path(lab["host"], "192.0.2.2", "192.0.2.0/24", "198.51.100.1")
    forwarder = start_forwarder(lab["host"], [LISTEN], ["192.0.2.2:27000"], args=send_path)
    client = client_socket(lab, "198.51.100.10")
    client.connect(("198.51.100.1", 27000))  # accepts replies from the host's address only

    for attempt in (b"one", b"two", b"three"):
        client.send(attempt)
        assert client.recv(65535) == b"echo:" + attempt
        # On the sockets path the forwarder keeps a socket bound to the client's address and port between
        # datagrams; it must not take the backend's reply (as a connect()ed one would, in UDP early demux).
        # The raw path keeps none.
        held = client.getsockname() in udp_sockets_bound(forwarder.process.pid)
        assert held is (send_path[-1] == "sockets")


def test_a_host_local_client_gets_no_kept_flow_and_its_drops_are_counted(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab, "192.0.2.2")
    forwarder = start_forwarder(
        lab["host"], ["0.0.0.0:27000"], ["192.0.2.2:27000"], args=[*FAST_STATUS, *send_path]
    )
    first = client_socket(lab, "198.51.100.10")
    first.sendto(b"wake", ("198.51.100.1", 27000))
    assert backend.recvfrom(65535)[0] == b"wake"
    forwarder.wait_ready()

    # A program on the host that lets others share its port: a kept (SO_REUSEADDR) flow socket could bind
    # it too and then hold the port and see its replies. The forwarder must not keep one.
    local = lab["host"].open_socket(socket.AF_INET)
    local.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    local.bind(("198.51.100.1", 0))
    local.sendto(b"local", ("198.51.100.1", 27000))
    loopback = lab["host"].udp_socket("127.0.0.1", 0)
    loopback.sendto(b"loopback", ("127.0.0.1", 27000))

    forwarder.notify.wait_for("STATUS", status_has("local-source:EADDRINUSE 1"), timeout=10)
    forwarder.notify.wait_for("STATUS", status_has("loopback-source 1"), timeout=10)
    assert udp_sockets_bound(forwarder.process.pid).count(local.getsockname()) == 1  # only its own


def test_an_error_on_one_destination_is_counted_by_errno_logged_once_and_never_stops_the_loop(
    lab: Lab, send_path: list[str], tmp_path: Path
) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab, "192.0.2.2")
    apply_ruleset(
        lab["host"],
        "table inet forwarder_test {\n"
        "    chain output {\n"
        "        type filter hook output priority filter; policy accept;\n"
        "        udp dport 27001 drop\n"
        "    }\n"
        "}\n",
    )
    forwarder = start_forwarder(
        lab["host"],
        [LISTEN, "198.51.100.1:27001"],
        ["192.0.2.2:27000", "192.0.2.2:27001"],
        args=[*FAST_STATUS, *send_path],
    )
    client = client_socket(lab, "198.51.100.10")
    client.sendto(b"wake", ("198.51.100.1", 27000))
    assert backend.recvfrom(65535)[0] == b"wake"
    forwarder.wait_ready()

    for _ in range(20):
        client.sendto(b"firewalled", ("198.51.100.1", 27001))
    client.sendto(b"after", ("198.51.100.1", 27000))

    assert backend.recvfrom(65535) == (b"after", client.getsockname())
    forwarder.notify.wait_for("STATUS", status_has("since start 2 forwarded, 20 dropped"), timeout=10)
    assert any("send-error:EPERM 20" in status for status in forwarder.notify.values("STATUS"))
    assert forwarder.stop() == 0
    log = forwarder.process.output()
    assert log.count("dropped datagram (send-error:EPERM)") == 1
    assert re.search(r"send-error:EPERM: 19 more in the last [0-9.]+ seconds", log), log


def nothing_but(backend: socket.socket, client: socket.socket, target: tuple[str, int]) -> None:
    """Send a datagram from `client` and require it to be the next (and only) one at `backend`: whatever was
    sent to that listener before it was dropped, not forwarded."""
    client.sendto(b"after", target)
    assert backend.recvfrom(65535)[:1] == (b"after",)


def test_a_datagram_from_the_unspecified_ipv6_address_is_dropped_not_sent_from_the_host(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(load_topology("dual-stack"))
    backend = backend_socket(lab, "2001:db8:2::2")
    forwarder = start_forwarder(
        lab["host"], ["[2001:db8:51::1]:27000"], ["[2001:db8:2::2]"], args=[*FAST_STATUS, *send_path]
    )
    client = client_socket(lab, "2001:db8:51::10")
    client.sendto(b"wake", ("2001:db8:51::1", 27000))
    assert backend.recvfrom(65535)[0] == b"wake"
    forwarder.wait_ready()

    # The kernel delivers a datagram from :: (the source of duplicate address detection) to the listener;
    # bound to ::, a one-shot socket would have sent it from the host's own address.
    lab["client"].send_udp(src="::", dst="2001:db8:51::1", sport=4242, dport=27000, payload=b"unspecified")

    forwarder.notify.wait_for("STATUS", status_has("unspecified-source 1"), timeout=10)
    nothing_but(backend, client, ("2001:db8:51::1", 27000))


def test_a_datagram_to_the_limited_broadcast_from_0_0_0_0_is_dropped_as_unspecified(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(seed_deployment())
    backend = backend_socket(lab, "192.0.2.2")
    forwarder = start_forwarder(
        lab["host"], ["0.0.0.0:27000"], ["192.0.2.2:27000"], args=[*FAST_STATUS, *send_path]
    )
    client = client_socket(lab, "198.51.100.10")
    client.sendto(b"wake", ("198.51.100.1", 27000))
    assert backend.recvfrom(65535)[0] == b"wake"
    forwarder.wait_ready()

    # 0.0.0.0 is a legal source only towards 255.255.255.255 (a DHCP client's first packet); a wildcard
    # listener receives it.
    lab["client"].send_udp(src="0.0.0.0", dst="255.255.255.255", sport=68, dport=27000, payload=b"dhcp")

    forwarder.notify.wait_for("STATUS", status_has("unspecified-source 1"), timeout=10)
    nothing_but(backend, client, ("198.51.100.1", 27000))


def test_a_datagram_from_the_client_subnets_broadcast_address_is_dropped_not_sent_from_the_host(
    lab: Lab,
    send_path: list[str],
) -> None:
    # Without reverse-path filtering the host accepts 198.51.100.255 as a source; bound to that address, a
    # socket's datagrams leave with the host's own address.
    lab.build(seed_deployment().sysctl("host", "net.ipv4.conf.all.rp_filter", "0"))
    lab["host"].sysctl("net.ipv4.conf.to-client.rp_filter", "0")
    backend = backend_socket(lab, "192.0.2.2")
    forwarder = start_forwarder(lab["host"], [LISTEN], ["192.0.2.2:27000"], args=[*FAST_STATUS, *send_path])
    client = client_socket(lab, "198.51.100.10")
    client.sendto(b"wake", ("198.51.100.1", 27000))
    assert backend.recvfrom(65535)[0] == b"wake"
    forwarder.wait_ready()

    lab["client"].send_udp(src="198.51.100.255", dst="198.51.100.1", sport=4242, dport=27000, payload=b"b")

    forwarder.notify.wait_for("STATUS", status_has("broadcast-source 1"), timeout=10)
    nothing_but(backend, client, ("198.51.100.1", 27000))


def test_a_v4_mapped_destination_on_a_dual_stack_listener_serves_ipv4_clients(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(load_topology("dual-stack"))
    backend = backend_socket(lab, "192.0.2.2")
    forwarder = start_forwarder(lab["host"], ["[::]:27000"], ["[::ffff:192.0.2.2]:27000"], args=send_path)
    client = client_socket(lab, "198.51.100.10")

    client.sendto(b"mapped", ("198.51.100.1", 27000))  # was dropped as family-mismatch, every one

    assert backend.recvfrom(65535) == (b"mapped", client.getsockname())
    forwarder.wait_ready()
