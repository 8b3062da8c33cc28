"""`netlab demo`: the seed README's deployment in a lab, run end to end and explained in a table.

    c1 198.51.100.10 ----.                 .---- 192.0.2.2, 2001:db8:2::2  backend (echo server on
    c2 203.0.113.20 ----[host: forwarder]-'                                 27000 27003 27020 27021)
    c3 2001:db8:1::10 --'  198.51.100.1, 203.0.113.1, 2001:db8:1::1 | 192.0.2.1, 2001:db8:2::1

systemd-socket-activate holds the host's four UDP ports (IPv4 and IPv6) and starts the forwarder on the
first datagram. With `--reply direct` (the default) the backend listens on the host's ports and the
reply-path rules make its answers leave with the host's address; with `--reply relay` the backend listens
on other ports (27000 -> 37000, ...), the host's relay routing hands its answers to the forwarder, and the
forwarder sends them on. Each client sends from a connect()ed socket, which accepts a reply only from the
address it sent to, so the table is the same in both modes.
"""

import sys
from dataclasses import dataclass, field
from typing import TextIO

from netlab.addresses import format_endpoint
from netlab.errors import NetlabError, UsageError
from netlab.fixtures import load_topology
from netlab.lab.lab import Lab
from netlab.lab.node import LabNode
from netlab.lab.process import Process, python_env
from netlab.lab.wait import wait_until
from netlab.service.activation import start_forwarder
from netlab.service.procnet import udp_ports_bound
from netlab.service.relay import install_relay_routing
from netlab.service.replypath import enable_reply_path
from netlab.topology.model import Topology

PORTS = (27000, 27003, 27020, 27021)
HOST_V4, HOST_V6 = "198.51.100.1", "2001:db8:1::1"
BACKEND_V4, BACKEND_V6 = "192.0.2.2", "2001:db8:2::2"
RELAY_PORT_OFFSET = 10000  # in relay mode the backend listens on the host's ports + this
REPLY_MODES = ("direct", "relay")


@dataclass(frozen=True)
class DemoPlan:
    """What the demo starts for a reply mode: the host's sockets, the forwarder's destinations and
    options, and the ports the backend's echo server listens on."""

    reply: str
    listen: list[str]
    destinations: list[str]
    backend_ports: tuple[int, ...]
    args: list[str] = field(default_factory=list)


def demo_plan(reply: str = "direct") -> DemoPlan:
    """The demo's plan for `reply` ('direct': the backend on the host's ports; 'relay': on other ports)."""
    if reply not in REPLY_MODES:
        raise UsageError(f"reply mode {reply!r}: expected one of {list(REPLY_MODES)}")
    offset = RELAY_PORT_OFFSET if reply == "relay" else 0
    backend_ports = tuple(port + offset for port in PORTS)
    listen = [format_endpoint(host, port) for host in (HOST_V4, HOST_V6) for port in PORTS]
    destinations = [
        format_endpoint(backend, port) for backend in (BACKEND_V4, BACKEND_V6) for port in backend_ports
    ]
    args = ["--stats-interval", "1"] + (["--reply", "relay"] if reply == "relay" else [])
    return DemoPlan(reply, listen, destinations, backend_ports, args)


def set_up_backend(lab: Lab, plan: DemoPlan) -> Process:
    """Start the backend's echo server on the plan's ports (returned) and the host's half of the reply
    path: the reply-path rules (direct) or the relay routing for those ports (relay)."""
    echo = lab["backend"].run(
        [sys.executable, "-m", "netlab.programs.echo", *map(str, plan.backend_ports)], env=python_env()
    )
    wait_until(lambda: set(plan.backend_ports) <= udp_ports_bound(echo.pid), "the echo server to listen", 10)
    if plan.reply == "relay":
        install_relay_routing(lab["host"], BACKEND_V4, list(plan.backend_ports))
        install_relay_routing(lab["host"], BACKEND_V6, list(plan.backend_ports))
    else:
        enable_reply_path(lab["host"], BACKEND_V4, "192.0.2.0/24", HOST_V4)
        enable_reply_path(lab["host"], BACKEND_V6, "2001:db8:2::/64", HOST_V6)
    return echo


def demo_topology() -> Topology:
    """Three clients (one IPv6) -- the host -- a dual-stack backend (fixtures/topologies/demo.toml)."""
    return load_topology("demo")


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


def client_exchange(node: LabNode, source: str, host: str, port: int) -> Row:
    """Send one datagram from a connect()ed socket in `node` and read the echo, if it comes."""
    sock = node.udp_socket(source, 0)
    sock.connect((host, port))
    sock.settimeout(5)
    row = Row(node.name, format_endpoint(source, sock.getsockname()[1]), format_endpoint(host, port))
    sock.send(b"hello from " + node.name.encode())
    try:
        reply = sock.recv(65535)
    except TimeoutError:
        return row
    row.seen = reply.decode(errors="replace").partition(";")[0].removeprefix("seen=")
    row.reply = "from host"  # a connected socket delivers only replies from host:port
    return row


def run_demo(out: TextIO = sys.stdout, reply: str = "direct") -> int:
    """Run the demo with the forwarder's `--reply` mode, print progress and the result table; return 0
    only when every row is right."""
    plan = demo_plan(reply)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    with Lab(description="netlab demo") as lab:
        say(f"[1/5] building lab {lab.lab_id}: three clients -- host -- dual-stack backend")
        lab.build(demo_topology())
        if plan.reply == "relay":
            ports = " ".join(map(str, plan.backend_ports))
            say(f"[2/5] starting a UDP echo server in the backend on {ports} and relay routing on the host")
        else:
            say("[2/5] starting a UDP echo server in the backend and the reply-path rules on the host")
        echo = set_up_backend(lab, plan)
        listen, destinations = plan.listen, plan.destinations
        say(f"[3/5] systemd-socket-activate holds {len(listen)} UDP sockets on the host; no forwarder yet")
        forwarder = start_forwarder(lab["host"], listen, destinations, args=plan.args)

        say("[4/5] sending: the first datagram starts the forwarder")
        rows = [
            client_exchange(lab["c1"], "198.51.100.10", HOST_V4, 27000),
            client_exchange(lab["c2"], "203.0.113.20", HOST_V4, 27003),
            client_exchange(lab["c3"], "2001:db8:1::10", HOST_V6, 27020),
        ]
        spoofed = Row(
            "c1", "203.0.113.7:4242", format_endpoint(HOST_V4, 27021), spoofed=True, reply="n/a (spoofed)"
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
    mapping = ", ".join(f"{port}->{backend}" for port, backend in zip(PORTS, plan.backend_ports, strict=True))
    say(f"reply mode: {plan.reply} (host port -> backend port: {mapping})")
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
    )
    return 0
