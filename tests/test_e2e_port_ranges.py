"""A whole port range on one socket (TPROXY), end to end under systemd-socket-activate: the host's nft
`tproxy` rule steers every port of the range into one transparent socket (a .socket unit's
`Transparent=true`; here the lab's held socket), the forwarder reads each datagram's original destination
and sends it to the backend port the destination's rule maps it to, from the client's address and port.

    client 198.51.100.10 2001:db8:51::10 --- 198.51.100.1 2001:db8:51::1 [host: forwarder, one socket]
    [host] 192.0.2.1 2001:db8:2::1 --- 192.0.2.2 2001:db8:2::2 backend (one transparent socket catches
                                                                       every backend port, the same way)
"""

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_helpers import send_path, serve_in_thread, status_has
from pyroute2 import IPRoute

from forwarder.core.addresses import decode_sockaddr
from forwarder.core.proxy_protocol import build, build_local
from forwarder.io.control import origdst_local
from forwarder.io.sockets import set_receive_buffer
from netlab import Lab, start_forwarder
from netlab.lab.nft import apply_ruleset
from netlab.lab.node import LabNode
from netlab.lab.process import python_env
from netlab.lab.tproxy import steer, transparent_socket
from netlab.lab.wait import wait_until
from netlab.service.activation import ForwarderUnderTest, HeldSockets
from netlab.service.procnet import udp_ports_bound
from netlab.service.relay import install_relay_route
from netlab.service.status import drops_by_reason
from netlab.topology.shipped import dual_stack

pytestmark = pytest.mark.privileged

CONTROL = socket.CMSG_SPACE(28)
__all__ = ["send_path"]  # the fixture: the outside-range test runs on both send paths
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HOST = {4: "198.51.100.1", 6: "2001:db8:51::1"}
CLIENT = {4: "198.51.100.10", 6: "2001:db8:51::10"}
BACKEND = {4: "192.0.2.2", 6: "2001:db8:2::2"}
# What one datagram seen at the backend tells: its payload, the client it came from, the port it was sent to.
Seen = tuple[bytes, tuple[str, int], int]


def _wildcard(version: int) -> str:
    return "0.0.0.0" if version == 4 else "[::]"


def range_listener(
    lab: Lab, version: int, port: int, dports: tuple[int, int], *, dual: bool = False
) -> HeldSockets:
    """The host's socket for a port range, as a .socket unit with `Transparent=true` and ReceiveBuffer=4M
    makes it, and the tproxy steering of `dports` into it (both families for a dual-stack one)."""
    host = lab["host"]
    sock = transparent_socket(host, version, port, dual_stack=dual)
    set_receive_buffer(sock, 4 << 20)
    for family in (4, 6) if dual else (version,):
        steer(host, version=family, to_port=port, daddr=HOST[family], dports=dports)
    return HeldSockets(host, [f"{_wildcard(version)}:{port}"], [sock])


def backend_catcher(node: LabNode, version: int, ports: tuple[int, int]) -> socket.socket:
    """One transparent socket on the backend that every port of `ports` reaches (its own tproxy rule), so
    a test sees which port each datagram was sent to without a socket per port."""
    sock = transparent_socket(node, version, ports[0])
    set_receive_buffer(sock, 4 << 20)
    steer(node, version=version, to_port=ports[0], daddr=BACKEND[version], dports=ports)
    return sock


def received(sock: socket.socket, count: int, timeout: float = 5.0) -> list[Seen]:
    """Up to `count` datagrams that reach `sock`, each until `timeout` after the one before."""
    sock.settimeout(timeout)
    got: list[Seen] = []
    while len(got) < count:
        try:
            data, ancillary, flags, sender = sock.recvmsg(2048, CONTROL)
        except TimeoutError:
            break
        original = origdst_local(ancillary, flags)
        assert original, f"no original destination for {data!r}"
        got.append((data, (str(sender[0]), int(sender[1])), int(decode_sockaddr(original)[1])))
    return got


def open_fds(forwarder: ForwarderUnderTest) -> int:
    return len(os.listdir(f"/proc/{forwarder.process.pid}/fd"))


def burst(sock: socket.socket, address: str, ports: range, tag: Callable[[int], bytes]) -> None:
    for port in ports:
        sock.sendto(tag(port), (address, port))


@pytest.mark.parametrize("version", [4, 6])
def test_a_thousand_ports_of_a_range_reach_their_backend_ports_through_one_socket(
    lab: Lab, version: int
) -> None:
    lab.build(dual_stack())
    catcher = backend_catcher(lab["backend"], version, (37000, 37999))
    held = range_listener(lab, version, 27000, (27000, 27999))
    backend = BACKEND[version] if version == 4 else f"[{BACKEND[version]}]"
    forwarder = start_forwarder(
        lab["host"],
        [],
        [f"27000-27999@{backend}:37000-37999"],
        sockets=held,
        args=["--stats-interval", "0.2"],
    )
    client = lab["client"].udp_socket(CLIENT[version], 4242)
    client.sendto(b"27500", (HOST[version], 27500))  # starts the forwarder
    forwarder.wait_ready()
    assert received(catcher, 1) == [(b"27500", (CLIENT[version], 4242), 37500)]
    fds = open_fds(forwarder)

    burst(client, HOST[version], range(27000, 28000), lambda port: str(port).encode())

    seen = received(catcher, 1000)
    assert sorted(seen) == sorted(
        (str(port).encode(), (CLIENT[version], 4242), port + 10000) for port in range(27000, 28000)
    )
    forwarder.wait_status(status_has("since start 1001 forwarded, 0 dropped; ports 27000-27999"))
    assert open_fds(forwarder) == fds  # a thousand ports (and flows) later: no descriptor more


def test_a_dual_stack_socket_forwards_its_ipv4_clients_of_the_range_as_ipv4(lab: Lab) -> None:
    lab.build(dual_stack())
    catcher = backend_catcher(lab["backend"], 4, (27000, 27099))
    held = range_listener(lab, 6, 27000, (27000, 27099), dual=True)
    forwarder = start_forwarder(
        lab["host"], [], ["27000-27099@192.0.2.2"], sockets=held, args=["--stats-interval", "0.2"]
    )
    client = lab["client"].udp_socket(CLIENT[4], 4243)

    burst(client, HOST[4], range(27000, 27100), lambda port: str(port).encode())

    seen = received(catcher, 100)
    assert sorted(seen) == sorted(
        (str(port).encode(), (CLIENT[4], 4243), port) for port in range(27000, 27100)
    )
    # An IPv6 client of the same socket cannot be presented to the IPv4 backend.
    lab["client"].udp_socket(CLIENT[6], 4244).sendto(b"six", (HOST[6], 27050))
    forwarder.wait_status(status_has("(family-mismatch 1)"))
    assert received(catcher, 1, timeout=0.3) == []


@pytest.mark.parametrize("receive", ["batch", "single"])
def test_a_datagram_to_a_port_outside_the_range_is_never_forwarded_and_is_counted(
    lab: Lab, receive: str, send_path: list[str]
) -> None:
    # The nft rule steers 27000-27099 to the socket, the destination serves only 27000-27049.
    lab.build(dual_stack())
    catcher = backend_catcher(lab["backend"], 4, (27000, 27099))
    held = range_listener(lab, 4, 27000, (27000, 27099))
    metrics = lab.workdir / "forwarder.prom"
    forwarder = start_forwarder(
        lab["host"], [], ["games=27000-27049@192.0.2.2"], sockets=held, fdnames=["games"],
        args=["--stats-interval", "0.2", "--receive", receive, "--metrics-file", str(metrics), *send_path],
    )  # fmt: skip
    client = lab["client"].udp_socket(CLIENT[4], 4245)

    for port in (27049, 27050, 27000, 27099):
        client.sendto(str(port).encode(), (HOST[4], port))

    assert sorted(received(catcher, 4, timeout=1.0)) == [
        (b"27000", (CLIENT[4], 4245), 27000),
        (b"27049", (CLIENT[4], 4245), 27049),
    ]
    forwarder.wait_status(status_has("since start 2 forwarded, 2 dropped; ports 27000-27049 on games: "))
    assert drops_by_reason(forwarder.notify.values("STATUS")) == {"outside-range": 2}
    # The log line names the port the client asked, not the range's first backend port.
    assert f"dropped datagram (outside-range) from {CLIENT[4]}:4245 on games to {HOST[4]}:27050" in (
        forwarder.process.output()
    )
    text = metrics.read_text()
    labels = '{listen="0.0.0.0:27000",socket="games",range="27000-27049"}'
    assert f"transparent_udp_forwarder_range_datagrams_received_total{labels} 2\n" in text
    assert f"transparent_udp_forwarder_range_datagrams_outside_total{labels} 2\n" in text


@pytest.mark.parametrize(
    ("version", "dual", "client_version"),
    [(4, False, 4), (6, False, 6), (6, True, 4)],
    ids=["ipv4", "ipv6", "dual-stack-ipv4-client"],
)
def test_in_relay_mode_each_reply_leaves_from_the_address_and_port_the_client_asked(
    lab: Lab, version: int, dual: bool, client_version: int, send_path: list[str]
) -> None:
    lab.build(dual_stack())
    host = lab["host"]
    host.sysctl("net.ipv4.ip_forward", "0")
    backend = BACKEND[client_version]
    answering = lab["backend"].udp_socket(backend, 5353)
    serve_in_thread(lab, answering, lambda data, peer: b"answer:" + data)
    install_relay_route(host, backend, 5353)
    held = range_listener(lab, version, 27000, (27000, 27099), dual=dual)
    target = backend if client_version == 4 else f"[{backend}]"
    forwarder = start_forwarder(
        host,
        [],
        [f"27000-27099@{target}:5353"],
        sockets=held,
        args=["--reply", "relay", "--stats-interval", "0.2", *send_path],
    )
    client = lab["client"].udp_socket(CLIENT[client_version], 4246)
    client.settimeout(5)

    answers = []
    for port in (27042, 27099, 27000, 27042):
        client.sendto(str(port).encode(), (HOST[client_version], port))
        data, source = client.recvfrom(100)
        answers.append((data, (str(source[0]), int(source[1]))))

    assert answers == [
        (f"answer:{port}".encode(), (HOST[client_version], port)) for port in (27042, 27099, 27000, 27042)
    ]
    forwarder.wait_status(
        status_has("since start 4 forwarded, 0 dropped, 4 replies relayed, 0 replies dropped")
    )


def test_with_listen_the_forwarder_makes_its_range_socket_transparent_itself(lab: Lab) -> None:
    lab.build(dual_stack())
    catcher = backend_catcher(lab["backend"], 4, (27000, 27099))
    steer(lab["host"], version=4, to_port=27000, daddr=HOST[4], dports=(27000, 27099))
    process = lab["host"].run(
        [sys.executable, "-m", "forwarder", "--listen", "0.0.0.0:27000", "27000-27099@192.0.2.2"],
        label="forwarder",
        env=python_env(),
    )
    wait_until(lambda: 27000 in udp_ports_bound(process.pid), "the forwarder to listen", 10)
    client = lab["client"].udp_socket(CLIENT[4], 4247)

    client.sendto(b"steered", (HOST[4], 27077))

    assert received(catcher, 1) == [(b"steered", (CLIENT[4], 4247), 27077)], process.output()


def test_without_the_mark_routing_the_start_up_warns_in_one_line_naming_what_to_add(lab: Lab) -> None:
    lab.build(dual_stack())
    # No steering at all on this host: no fwmark rule of either family (the nft rule is the doctor's). A
    # datagram to the socket's own port still reaches it.
    held = HeldSockets(lab["host"], ["0.0.0.0:27000"], [transparent_socket(lab["host"], 4, 27000)])
    forwarder = start_forwarder(lab["host"], [], ["27000-27099@192.0.2.2"], sockets=held)
    lab["client"].udp_socket(CLIENT[4], 4248).sendto(b"start", (HOST[4], 27000))
    forwarder.wait_ready()

    warnings = [line for line in forwarder.process.output().splitlines() if "tproxy:" in line]
    assert len(warnings) == 1, forwarder.process.output()
    assert "ip rule add fwmark 1 lookup 100" in warnings[0]
    assert "ip route add local 0.0.0.0/0 dev lo table 100" in warnings[0]


def mark_routing(node: LabNode) -> None:
    """What the ruleset's comment tells the operator to add: fwmark 1 to table 100, `local` everything."""
    with IPRoute(netns=node.namespace) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for family, everything in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            ipr.route(
                "add", dst=everything, dst_len=0, family=family, type="local", scope=254, table=100, oif=lo
            )
            ipr.rule("add", family=family, fwmark=1, table=100, priority=90)


@pytest.mark.parametrize("version", [4, 6])
def test_the_shipped_ruleset_steers_the_range_of_both_families_to_the_units_one_socket(
    lab: Lab, version: int
) -> None:
    lab.build(dual_stack())
    host = lab["host"]
    apply_ruleset(host, (FIXTURES / "tproxy" / "port-range.nft").read_text(), label="port-range")
    mark_routing(host)
    catcher = backend_catcher(lab["backend"], version, (27000, 27050))
    # transparent-udp-forwarder-range@27000.socket: [::]:27000, both families, Transparent=true.
    held = HeldSockets(host, ["[::]:27000"], [transparent_socket(host, 6, 27000, dual_stack=True)])
    backend = BACKEND[version] if version == 4 else f"[{BACKEND[version]}]"
    forwarder = start_forwarder(
        host, [], [f"range-27000=27000-27050@{backend}"], sockets=held, fdnames=["range-27000"]
    )
    client = lab["client"].udp_socket(CLIENT[version], 4249)

    for port in (27050, 27001, 27051):
        client.sendto(str(port).encode(), (HOST[version], port))

    assert sorted(received(catcher, 3, timeout=1.0)) == [
        (b"27001", (CLIENT[version], 4249), 27001),
        (b"27050", (CLIENT[version], 4249), 27050),
    ]
    forwarder.wait_ready()
    assert "tproxy:" not in forwarder.process.output()  # the mark routing is there: no warning
    # The start-up line shows the mapping, not only the range's first backend port.
    assert f"forwarding range-27000 -> 27000-27050@{backend}:27000-27050\n" in forwarder.process.output()


def test_a_spoofed_ipv6_datagram_with_a_v4_mapped_source_cannot_stop_a_relaying_range(lab: Lab) -> None:
    # The backend answers it as the IPv4 client the mapped source names, but that client asked an IPv6
    # address: no reply can leave from there to it. Both families' raw reply sockets are open (a second,
    # IPv6 range), so the reply is not refused for want of one.
    lab.build(dual_stack())
    host = lab["host"]
    host.sysctl("net.ipv4.ip_forward", "0")
    answering = lab["backend"].udp_socket(BACKEND[4], 5353)
    serve_in_thread(lab, answering, lambda data, peer: b"answer:" + data)
    install_relay_route(host, BACKEND[4], 5353)
    held = range_listener(lab, 6, 27000, (27000, 27099), dual=True)
    six = transparent_socket(host, 6, 28000)
    held = HeldSockets(host, [*held.listen, "[::]:28000"], [*held.sockets, six])
    forwarder = start_forwarder(
        host,
        [],
        ["27000-27099@192.0.2.2:5353", f"28000-28099@[{BACKEND[6]}]:5353"],
        sockets=held,
        args=["--reply", "relay", "--stats-interval", "0.2"],
    )
    client = lab["client"].udp_socket(CLIENT[4], 4250)
    client.settimeout(5)
    client.sendto(b"before", (HOST[4], 27001))
    assert client.recvfrom(100) == (b"answer:before", (HOST[4], 27001))

    lab["client"].send_udp(src=f"::ffff:{CLIENT[4]}", dst=HOST[6], sport=4251, dport=27010, payload=b"mapped")
    forwarder.wait_status(status_has("1 replies dropped"))

    client.sendto(b"after", (HOST[4], 27002))
    assert client.recvfrom(100) == (b"answer:after", (HOST[4], 27002)), forwarder.process.output()
    assert "reply-send-error:EAFNOSUPPORT" in forwarder.process.output()


@pytest.mark.parametrize(
    ("destination", "asked", "back"),
    [
        ("27000-27050@198.51.100.1:27030", 27010, 27030),
        ("27000-27050@198.51.100.1:27001-27051", 27000, 27001),
    ],
    ids=["one-port-in-the-range", "by-offset-into-the-range"],
)
@pytest.mark.parametrize("receive", ["batch", "single"])
def test_a_datagram_the_rule_steers_back_from_a_backend_port_on_this_host_is_dropped_as_a_loop(
    lab: Lab, destination: str, asked: int, back: int, receive: str
) -> None:
    # The backend is this host's own steered address, in ports the rule steers: each datagram the
    # forwarder sent came back to its socket (through lo and prerouting) and circled for ever (one port)
    # or hopped up the range (by offset).
    lab.build(dual_stack())
    held = range_listener(lab, 4, 27000, (27000, 27050))
    forwarder = start_forwarder(
        lab["host"], [], [destination], sockets=held, args=["--stats-interval", "0.2", "--receive", receive]
    )
    client = lab["client"].udp_socket(CLIENT[4], 4252)

    client.sendto(b"once", (HOST[4], asked))

    forwarder.wait_status(status_has("since start 1 forwarded, 1 dropped;"))
    forwarder.wait_status(status_has("0 datagrams forwarded in the last"))  # and nothing more
    assert "since start 1 forwarded, 1 dropped;" in forwarder.notify.values("STATUS")[-1]
    assert drops_by_reason(forwarder.notify.values("STATUS")) == {"loop": 1}
    line = f"dropped datagram (loop) from {CLIENT[4]}:4252 on 0.0.0.0:27000 to {HOST[4]}:{back}"
    assert line in forwarder.process.output()


TRUST = ["--proxy-protocol-from", "198.51.100.8/29"]  # the client node stands for a load balancer


@pytest.mark.parametrize("receive", ["batch", "single"])
def test_a_trusted_load_balancers_header_names_the_client_and_the_port_asked_picks_the_backend_port(
    lab: Lab, receive: str, send_path: list[str]
) -> None:
    lab.build(dual_stack())
    catcher = backend_catcher(lab["backend"], 4, (37000, 37099))
    held = range_listener(lab, 4, 27000, (27000, 27099))
    forwarder = start_forwarder(
        lab["host"], [], ["27000-27049@192.0.2.2:37000-37049"], sockets=held,
        args=[*TRUST, "--stats-interval", "0.2", "--receive", receive, *send_path],
    )  # fmt: skip
    balancer = lab["client"].udp_socket(CLIENT[4], 4253)

    for client, port in ((("203.0.113.7", 4242), 27042), (("203.0.113.8", 5353), 27001)):
        balancer.sendto(build(client, (HOST[4], port)) + str(port).encode(), (HOST[4], port))
    # The header's destination is the balancer's word; the port the datagram was sent to picks the backend.
    balancer.sendto(build(("203.0.113.7", 4242), (HOST[4], 27042)) + b"27003", (HOST[4], 27003))
    balancer.sendto(build_local() + b"health", (HOST[4], 27049))
    # Outside the range: dropped before its header is read, as any datagram there.
    balancer.sendto(build(("203.0.113.7", 4242), (HOST[4], 27050)) + b"27050", (HOST[4], 27050))
    balancer.sendto(b"no header", (HOST[4], 27010))

    assert sorted(received(catcher, 6, timeout=1.0)) == [
        (b"27001", ("203.0.113.8", 5353), 37001),
        (b"27003", ("203.0.113.7", 4242), 37003),
        (b"27042", ("203.0.113.7", 4242), 37042),
        (b"health", (CLIENT[4], 4253), 37049),
    ]
    forwarder.wait_status(status_has("since start 4 forwarded, 2 dropped;"))
    assert drops_by_reason(forwarder.notify.values("STATUS")) == {
        "outside-range": 1,
        "proxy-header-missing": 1,
    }


def test_in_relay_mode_a_load_balanced_clients_reply_goes_to_the_balancer_from_the_port_it_asked(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(dual_stack())
    host = lab["host"]
    host.sysctl("net.ipv4.ip_forward", "0")
    answering = lab["backend"].udp_socket(BACKEND[4], 5353)
    serve_in_thread(lab, answering, lambda data, peer: f"answer to {peer[0]}:{peer[1]}: ".encode() + data)
    install_relay_route(host, BACKEND[4], 5353)
    held = range_listener(lab, 4, 27000, (27000, 27099))
    forwarder = start_forwarder(
        host, [], ["27000-27099@192.0.2.2:5353"], sockets=held,
        args=[*TRUST, "--reply", "relay", "--stats-interval", "0.2", *send_path],
    )  # fmt: skip
    balancer = lab["client"].udp_socket(CLIENT[4], 4254)
    balancer.settimeout(5)

    answers = []
    for client, port in ((("203.0.113.7", 4242), 27042), (("203.0.113.8", 5353), 27099)):
        balancer.sendto(build(client, (HOST[4], port)) + b"question", (HOST[4], port))
        data, source = balancer.recvfrom(200)
        answers.append((data, (str(source[0]), int(source[1]))))

    assert answers == [
        (b"answer to 203.0.113.7:4242: question", (HOST[4], 27042)),
        (b"answer to 203.0.113.8:5353: question", (HOST[4], 27099)),
    ]
    forwarder.wait_status(
        status_has("since start 2 forwarded, 0 dropped, 2 replies relayed, 0 replies dropped")
    )
