"""`netlab demo`: the seed README's deployment in a lab, run end to end and explained in a table.

    c1 198.51.100.10 ----.                 .---- 192.0.2.2, 2001:db8:2::2  backend (echo server on
    c2 203.0.113.20 ----[host: forwarder]-'                                 27000 27003 27020 27021)
    c3 2001:db8:1::10 --'  198.51.100.1, 203.0.113.1, 2001:db8:1::1 | 192.0.2.1, 2001:db8:2::1

systemd-socket-activate holds the host's four UDP ports (IPv4 and IPv6) and starts the forwarder on the
first datagram; the reply-path rules make the backend's answers leave with the host's address. Each client
sends from a connect()ed socket, which accepts a reply only from the address it sent to. With `--reply
relay` the backend listens on other ports (37000 ...), the host routes its replies to the forwarder
(netlab.relayroute) and the forwarder sends them back itself.
"""

import sys
from dataclasses import dataclass
from typing import TextIO

from netlab.activation import start_forwarder, udp_ports_bound
from netlab.errors import NetlabError
from netlab.lab import Lab, LabNode, python_env, wait_until
from netlab.relayroute import install_relay_route
from netlab.replypath import enable_reply_path
from netlab.topology import Topology

PORTS = (27000, 27003, 27020, 27021)
RELAY_OFFSET = 10000  # in relay mode the backend answers on port + 10000: another port than the host's
HOST_V4, HOST_V6 = "198.51.100.1", "2001:db8:1::1"
BACKEND_V4, BACKEND_V6 = "192.0.2.2", "2001:db8:2::2"


def demo_topology() -> Topology:
    """Three clients (one IPv6) -- the host -- a dual-stack container backend."""
    return (
        Topology()
        .node("c1")
        .node("c2")
        .node("c3")
        .node("host")
        .node("backend")
        .sysctl("host", "net.ipv4.ip_forward", "1")
        .sysctl("host", "net.ipv6.conf.all.forwarding", "1")
        .link("c1", "host", a_addresses=["198.51.100.10/24"], b_addresses=["198.51.100.1/24"])
        .link("c2", "host", a_addresses=["203.0.113.20/24"], b_addresses=["203.0.113.1/24"])
        .link("c3", "host", a_addresses=["2001:db8:1::10/64"], b_addresses=["2001:db8:1::1/64"])
        .link(
            "host",
            "backend",
            a_addresses=["192.0.2.1/24", "2001:db8:2::1/64"],
            b_addresses=["192.0.2.2/24", "2001:db8:2::2/64"],
        )
        .route("c1", "default", via="198.51.100.1")
        .route("c2", "default", via="203.0.113.1")
        .route("c3", "default", via="2001:db8:1::1")
        .route("backend", "default", via="192.0.2.1")
        .route("backend", "default6", via="2001:db8:2::1")
    )


@dataclass
class Row:
    """One datagram of the demo: who sent it, what the backend saw, whether the reply came back right."""

    node: str
    client: str  # ip:port the client sent from (or the spoofed one)
    target: str
    spoofed: bool = False
    seen: str = "nothing"
    reply: str = "none"

    @property
    def ok(self) -> bool:
        return self.seen == self.client and (self.spoofed or self.reply == "from host")


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def client_exchange(node: LabNode, source: str, host: str, port: int) -> Row:
    """Send one datagram from a connect()ed socket in `node` and read the echo, if it comes."""
    sock = node.udp_socket(source, 0)
    sock.connect((host, port))
    sock.settimeout(5)
    row = Row(node.name, _endpoint(source, sock.getsockname()[1]), _endpoint(host, port))
    sock.send(b"hello from " + node.name.encode())
    try:
        reply = sock.recv(65535)
    except TimeoutError:
        return row
    row.seen = reply.decode(errors="replace").partition(";")[0].removeprefix("seen=")
    row.reply = "from host"  # a connected socket delivers only replies from host:port
    return row


def run_demo(out: TextIO = sys.stdout, reply: str = "direct") -> int:
    """Run the demo (`reply`: the forwarder's --reply mode), print progress and the result table; return 0
    only when every row is right."""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    relay = reply == "relay"
    backend_ports = [port + RELAY_OFFSET if relay else port for port in PORTS]
    with Lab(description="netlab demo") as lab:
        say(f"[1/5] building lab {lab.lab_id}: three clients -- host -- dual-stack backend")
        lab.build(demo_topology())
        echo = lab["backend"].run(
            [sys.executable, "-m", "netlab.echo", *map(str, backend_ports)], env=python_env()
        )
        wait_until(lambda: set(backend_ports) <= udp_ports_bound(echo.pid), "the echo server to listen", 10)
        if relay:
            ports = ", ".join(map(str, backend_ports))
            say(
                f"[2/5] a UDP echo server in the backend on other ports ({ports}) and the relay routing on "
                "the host (only the backend's replies go to the forwarder)"
            )
            for port in backend_ports:
                install_relay_route(lab["host"], BACKEND_V4, port)
                install_relay_route(lab["host"], BACKEND_V6, port)
        else:
            say("[2/5] starting a UDP echo server in the backend and the reply-path rules on the host")
            enable_reply_path(lab["host"], BACKEND_V4, "192.0.2.0/24", HOST_V4)
            enable_reply_path(lab["host"], BACKEND_V6, "2001:db8:2::/64", HOST_V6)
        listen = [_endpoint(HOST_V4, port) for port in PORTS] + [_endpoint(HOST_V6, port) for port in PORTS]
        destinations = [_endpoint(BACKEND_V4, p) for p in backend_ports] + [
            _endpoint(BACKEND_V6, p) for p in backend_ports
        ]
        say(f"[3/5] systemd-socket-activate holds {len(listen)} UDP sockets on the host; no forwarder yet")
        forwarder = start_forwarder(
            lab["host"], listen, destinations, args=["--stats-interval", "1", "--reply", reply]
        )

        say("[4/5] sending: the first datagram starts the forwarder")
        rows = [
            client_exchange(lab["c1"], "198.51.100.10", HOST_V4, 27000),
            client_exchange(lab["c2"], "203.0.113.20", HOST_V4, 27003),
            client_exchange(lab["c3"], "2001:db8:1::10", HOST_V6, 27020),
        ]
        spoofed = Row(
            "c1", "203.0.113.7:4242", _endpoint(HOST_V4, 27021), spoofed=True, reply="n/a (spoofed)"
        )
        lab["c1"].send_udp(src="203.0.113.7", dst=HOST_V4, sport=4242, dport=27021, payload=b"spoofed")
        forwarder.wait_ready(timeout=10)
        rows.append(spoofed)
        logged = f"seen {spoofed.client} "
        try:
            wait_until(lambda: logged in echo.output(), "the backend to log the spoofed datagram", 5)
            spoofed.seen = spoofed.client
        except NetlabError:
            pass

        status = forwarder.notify.wait_for("STATUS", lambda value: "forwarded" in value, timeout=5)
        code = forwarder.stop()
        say("[5/5] tearing down the lab")

    say("")
    say(f"{'client':<6} {'sent from':<22} {'to':<22} {'backend saw':<22} reply")
    for row in rows:
        flag = "" if row.ok else "   <-- WRONG"
        say(f"{row.node:<6} {row.client:<22} {row.target:<22} {row.seen:<22} {row.reply}{flag}")
    say("")
    say(f"forwarder STATUS: {status.value}")
    say(f"forwarder exit code after SIGTERM: {code}")
    failures = sum(not row.ok for row in rows) + (code != 0)
    if failures:
        say(f"demo FAILED: {failures} problem(s) above")
        return 1
    say(
        "demo passed: the backend saw every client's own address and port, and every reply came from the host"
        + (" (relayed by the forwarder from the backend's other ports)" if relay else "")
    )
    return 0
