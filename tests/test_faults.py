"""Faults the forwarder survives, for real in a lab: an unreachable backend, its namespace deleted
mid-stream, its link down and up again, a firewall rejecting the sends, a low RLIMIT_NOFILE with many flows,
SIGTERM in the middle of a burst, a flood of a million datagrams over 10,000 flows, and malformed, oversize
and truncated datagrams mixed into valid traffic. In every case the loop keeps running (the process is
alive and later datagrams arrive), the STATUS= counters say what happened, and the log is not flooded (each
drop kind is logged at most once per status interval, plus one summary line).

    client 198.51.100.10 --- 198.51.100.1 [host: forwarder] 192.0.2.1/25   --- 192.0.2.2/25   backend
                                          [host]            192.0.2.129/25 --- 192.0.2.130/25 spare

    198.51.100.1:27000 -> backend 192.0.2.2:27000      198.51.100.1:27001 -> spare 192.0.2.130:27001

The spare route stays healthy throughout: it proves the loop still forwards while the backend's is broken.
"""

import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from e2e_helpers import (
    TotalsPredicate,
    blaster_summary,
    count_arrivals,
    count_departures,
    start_blaster,
    status_has,
)
from forwarder_helpers import drain
from pyroute2 import IPRoute

from forwarder.core.destination import Destination
from forwarder.core.machine import ForwardingMachine
from forwarder.io.engine import Engine
from forwarder.io.linux import SO_RCVBUFFORCE  # root may exceed net.core.rmem_max with it
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.service.notify import Notifier
from netlab import Lab, load_topology, start_forwarder
from netlab.lab import netns
from netlab.lab.nft import apply_ruleset, counter_packets, delete_table
from netlab.lab.node import LabNode
from netlab.lab.process import python_env
from netlab.lab.wait import wait_until
from netlab.service.activation import ForwarderUnderTest
from netlab.service.notify import NotifyEvent
from netlab.service.status import drops_by_reason, status_totals
from netlab.topology.model import Topology

pytestmark = pytest.mark.privileged

CLIENT = "198.51.100.10"
HOST = "198.51.100.1"
BACKEND = ("192.0.2.2", 27000)
SPARE = ("192.0.2.130", 27001)
INTERVAL = 0.2


def faults_deployment() -> Topology:
    """The seed deployment plus a spare backend on a link of its own (fixtures/topologies/faults.toml)."""
    return load_topology("faults")


def received(sock: socket.socket, count: int) -> list[tuple[bytes, tuple[str, int]]]:
    return [sock.recvfrom(65535) for _ in range(count)]


@dataclass
class Scene:
    """A running forwarder with both routes, a client socket, and the spare backend's socket."""

    lab: Lab
    forwarder: ForwarderUnderTest
    client: socket.socket
    spare: socket.socket

    @classmethod
    def start(
        cls, lab: Lab, args: list[str] | None = None, command_prefix: list[str] | None = None
    ) -> "Scene":
        lab.build(faults_deployment())
        spare = lab["spare"].udp_socket(*SPARE)
        spare.settimeout(10)
        forwarder = start_forwarder(
            lab["host"],
            [f"{HOST}:27000", f"{HOST}:27001"],
            [f"{BACKEND[0]}:{BACKEND[1]}", f"{SPARE[0]}:{SPARE[1]}"],
            args=["--stats-interval", str(INTERVAL), *(args or [])],
            command_prefix=command_prefix or [],
        )
        client = lab["client"].udp_socket(CLIENT, 0)
        client.settimeout(10)
        scene = cls(lab, forwarder, client, spare)
        scene.check_spare_route(b"wake")
        forwarder.wait_ready()
        return scene

    def send(self, port: int, payload: bytes, count: int = 1) -> None:
        for _ in range(count):
            self.client.sendto(payload, (HOST, port))

    def check_spare_route(self, payload: bytes) -> None:
        """A datagram through the healthy route arrives, from the client's address and port."""
        self.send(SPARE[1], payload)
        assert self.spare.recvfrom(65535) == (payload, self.client.getsockname())

    def wait_totals(self, forwarded: int, dropped: int, timeout: float = 15.0) -> None:
        self.forwarder.notify.wait_for(
            "STATUS", status_has(f"since start {forwarded} forwarded, {dropped} dropped"), timeout=timeout
        )

    def drops(self) -> dict[str, int]:
        return dict(drops_by_reason(self.forwarder.notify.values("STATUS")))

    def assert_alive_and_quiet(self) -> None:
        """The loop still runs, and the log names each drop kind at most once per interval (+ a summary)."""
        assert self.forwarder.is_running(), self.forwarder.process.output()
        assert_quiet_log(self.forwarder)


def forwarder_log(forwarder: ForwarderUnderTest) -> str:
    """What the forwarder logged: the process output after systemd-socket-activate's own lines."""
    output = forwarder.process.output()
    marker = output.find("Execing ")
    return output if marker < 0 else output[output.find("\n", marker) + 1 :]


def assert_quiet_log(forwarder: ForwarderUnderTest, extra_lines: int = 1) -> None:
    statuses = forwarder.notify.values("STATUS")
    log = forwarder_log(forwarder)
    assert "Traceback" not in log, log
    allowed = 2 + extra_lines  # "forwarding ...", "stopped", and what the test expects besides drops
    for key in drops_by_reason(statuses):
        intervals = sum(1 for status in statuses if f"({key} " in status or f", {key} " in status)
        logged = log.count(f"dropped datagram ({key})")
        assert 1 <= logged <= intervals + 1, (key, intervals, log)
        allowed += 2 * (intervals + 1)
    assert len(log.splitlines()) <= allowed, log


def snmp(node: LabNode) -> dict[str, int]:
    """The node's /proc/net/snmp counters as {'Udp.InErrors': n, 'Ip.ReasmFails': n, ...}."""
    lines = node.check(["cat", "/proc/net/snmp"]).splitlines()
    counters: dict[str, int] = {}
    for header, values in zip(lines[::2], lines[1::2], strict=True):
        group, _, names = header.partition(": ")
        for name, value in zip(names.split(), values.partition(": ")[2].split(), strict=True):
            counters[f"{group}.{name}"] = int(value)
    return counters


def test_an_unreachable_backend_is_counted_by_errno_and_the_other_route_keeps_forwarding(lab: Lab) -> None:
    scene = Scene.start(lab)
    apply_ruleset(
        lab["backend"],
        """
        table inet icmp_out {
            counter unreachable { }
            chain output {
                type filter hook output priority filter; policy accept;
                icmp type destination-unreachable counter name "unreachable"
            }
        }
        """,
    )

    def icmp_sent() -> int:
        return counter_packets(lab["backend"], "inet", "icmp_out", "unreachable")

    # Nothing listens on the backend's port: it answers each datagram with ICMP port unreachable, addressed
    # to the client (the source the forwarder presented). The flow sockets are unconnected, so the kernel
    # does not report these errors to them: the forwarder counts the datagrams as forwarded, rightly.
    scene.send(BACKEND[1], b"closed", 10)
    wait_until(lambda: icmp_sent() == 10, "10 ICMP port unreachable from the backend", 10)
    scene.wait_totals(forwarded=11, dropped=0)

    # The host has no route to the backend: each send fails at once and is counted by its errno.
    lab["host"].check(["ip", "route", "add", "unreachable", f"{BACKEND[0]}/32"])
    scene.send(BACKEND[1], b"no route", 10)
    scene.check_spare_route(b"spare still works")
    scene.wait_totals(forwarded=12, dropped=10)
    assert scene.drops() == {"send-error:EHOSTUNREACH": 10}

    lab["host"].check(["ip", "route", "del", "unreachable", f"{BACKEND[0]}/32"])
    backend = lab["backend"].udp_socket(*BACKEND)
    backend.settimeout(10)
    scene.send(BACKEND[1], b"back")
    assert backend.recvfrom(65535) == (b"back", scene.client.getsockname())
    scene.wait_totals(forwarded=13, dropped=10)
    scene.assert_alive_and_quiet()


def test_the_backend_namespace_deleted_mid_stream_is_counted_and_the_other_route_keeps_forwarding(
    lab: Lab,
) -> None:
    scene = Scene.start(lab)
    backend = lab["backend"].udp_socket(*BACKEND)
    backend.settimeout(10)
    sent = count_departures(lab["client"], BACKEND[1])
    before = snmp(lab["host"])["Udp.RcvbufErrors"]
    # A stream that lasts until the test has seen what it waits for, however slow the machine is today.
    blaster = start_blaster(
        lab["client"], src=CLIENT, dst=HOST, dport=BACKEND[1], flows=20, rate=2000, duration=60
    )
    received(backend, 100)  # the stream is flowing
    backend.close()  # the last thing that keeps the namespace alive besides its name
    lab.destroy_node("backend")

    # The host's end of the link goes with the namespace, and with it the route to the backend.
    scene.forwarder.notify.wait_for("STATUS", status_has("send-error:ENETUNREACH"), timeout=10)
    blaster.stop()
    scene.check_spare_route(b"spare still works")
    # Every datagram the host's socket took was forwarded or dropped, and said so.
    handled = 2 + sent() - (snmp(lab["host"])["Udp.RcvbufErrors"] - before)
    scene.forwarder.notify.wait_for(
        "STATUS",
        TotalsPredicate(lambda f, d: f + d == handled, f"forwarded + dropped = {handled}"),
        timeout=15,
    )
    assert not netns.exists(lab["backend"].namespace)
    assert set(scene.drops()) == {"send-error:ENETUNREACH"}, scene.drops()
    scene.assert_alive_and_quiet()


def test_the_backend_link_down_then_up_again_is_counted_and_forwarding_resumes(lab: Lab) -> None:
    scene = Scene.start(lab)
    backend = lab["backend"].udp_socket(*BACKEND)
    backend.settimeout(10)
    scene.send(BACKEND[1], b"before")
    assert backend.recvfrom(65535) == (b"before", scene.client.getsockname())

    with IPRoute(netns=lab["host"].namespace) as ipr:
        index = ipr.link_lookup(ifname="to-backend")[0]
        ipr.link("set", index=index, state="down")
        scene.send(BACKEND[1], b"while down", 10)
        scene.check_spare_route(b"spare still works")
        scene.wait_totals(forwarded=3, dropped=10)
        ipr.link("set", index=index, state="up")

    scene.send(BACKEND[1], b"after")
    assert backend.recvfrom(65535) == (b"after", scene.client.getsockname())
    scene.wait_totals(forwarded=4, dropped=10)
    assert scene.drops() == {"send-error:ENETUNREACH": 10}
    scene.assert_alive_and_quiet()


@pytest.mark.parametrize("verdict", ["reject with icmp type admin-prohibited", "drop"])
def test_a_firewall_rejecting_the_sends_is_counted_as_eperm_and_forwarding_resumes_without_it(
    lab: Lab, verdict: str
) -> None:
    scene = Scene.start(lab)
    backend = lab["backend"].udp_socket(*BACKEND)
    backend.settimeout(10)
    apply_ruleset(
        lab["host"],
        f"""
        table inet firewall {{
            chain output {{
                type filter hook output priority filter; policy accept;
                ip daddr {BACKEND[0]} udp dport {BACKEND[1]} {verdict}
            }}
        }}
        """,
    )
    scene.send(BACKEND[1], b"firewalled", 30)
    scene.check_spare_route(b"spare still works")
    scene.wait_totals(forwarded=2, dropped=30)

    delete_table(lab["host"], "inet", "firewall")
    scene.send(BACKEND[1], b"allowed")
    assert backend.recvfrom(65535) == (b"allowed", scene.client.getsockname())
    scene.wait_totals(forwarded=3, dropped=30)
    assert scene.drops() == {"send-error:EPERM": 30}
    scene.assert_alive_and_quiet()


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")
def test_a_low_open_file_limit_caps_the_flows_and_datagrams_keep_flowing_without_emfile(lab: Lab) -> None:
    # prlimit execs the forwarder, which keeps the pid LISTEN_PID names. Per-client sockets: on the raw
    # path a flow holds no file descriptor.
    scene = Scene.start(
        lab,
        args=["--max-flows", "1000", "--send-path", "sockets"],
        command_prefix=["prlimit", "--nofile=128:128", "--"],
    )
    arrived = count_arrivals(lab["backend"], BACKEND[1])
    before = snmp(lab["host"])["Udp.RcvbufErrors"]

    # 1000 flows round robin, more than the 62 sockets that fit: every datagram evicts and opens one.
    blaster = start_blaster(
        lab["client"], src=CLIENT, dst=HOST, dport=BACKEND[1], flows=1000, rate=5000, count=5000, duration=30
    )
    sent = int(blaster_summary(blaster)["sent"])
    lost_in_host_buffer = snmp(lab["host"])["Udp.RcvbufErrors"] - before
    forwarded = 1 + sent - lost_in_host_buffer
    scene.wait_totals(forwarded=forwarded, dropped=0)
    scene.check_spare_route(b"spare still works")
    assert arrived() == forwarded - 1
    assert "--max-flows 1000 lowered to 62 to fit RLIMIT_NOFILE 128" in scene.forwarder.process.output()
    flows = [
        int(status.rpartition("; ")[2].split()[0]) for status in scene.forwarder.notify.values("STATUS")[1:]
    ]
    assert max(flows) == 62, flows
    assert len(os.listdir(f"/proc/{scene.forwarder.process.pid}/fd")) <= 128
    scene.assert_alive_and_quiet()


def test_sigterm_in_the_middle_of_a_burst_exits_zero_after_stopping_with_every_counted_datagram_delivered(
    lab: Lab,
) -> None:
    scene = Scene.start(lab)
    backend = lab["backend"].udp_socket(*BACKEND)
    backend.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    backend.settimeout(10)
    payload = bytes(200)
    blaster = start_blaster(
        lab["client"],
        src=CLIENT,
        dst=HOST,
        dport=BACKEND[1],
        flows=50,
        size=len(payload),
        rate=20000,
        count=200_000,
        duration=30,
    )
    arrivals = received(backend, 500)  # the burst is in full swing
    scene.forwarder.process.signal(signal.SIGTERM)
    assert scene.forwarder.process.wait(10) == 0
    blaster.stop()

    backend.settimeout(0.5)  # the forwarder is gone: what is in flight arrives within this
    while True:
        try:
            arrivals.append(backend.recvfrom(65535))
        except TimeoutError:
            break
    events = [(event.key, event.value) for event in scene.forwarder.notify.events]
    assert events[-2:] == [("STOPPING", "1"), ("STATUS", "Stopping.")], events[-4:]
    final = status_totals(events[-3][1])
    assert final == (1 + len(arrivals), 0), (final, len(arrivals))  # 1: the wake-up through the spare
    assert all(data == payload for data, _ in arrivals)
    log = scene.forwarder.process.output()
    assert log.rstrip().endswith("INFO stopped"), log
    assert_quiet_log(scene.forwarder)


@pytest.mark.slow
def test_a_flood_of_a_million_datagrams_over_10000_flows_keeps_rss_bounded(
    lab: Lab, record_property: Callable[[str, object], None]
) -> None:
    scene = Scene.start(lab, args=["--max-flows", "2000", "--stats-interval", "0.5"])
    arrived = count_arrivals(lab["backend"], BACKEND[1])
    pid = scene.forwarder.process.pid
    flood = {"src": CLIENT, "dst": HOST, "dport": BACKEND[1], "flows": 10_000, "duration": 120}
    # Warm-up: every flow once, the flow table full, every code path run: RSS has reached its working size.
    blaster_summary(start_blaster(lab["client"], **flood, rate=FLOOD_RATE, count=20_000))
    wait_idle(scene.forwarder)
    rss_before = vm_rss(pid)
    delivered_before = arrived()
    path = [lab["client"], lab["host"], lab["backend"]]
    drops_before, softnet_before = kernel_drops(path), softnet_dropped()

    summary = blaster_summary(start_blaster(lab["client"], **flood, rate=FLOOD_RATE, count=1_000_000), 150)
    idle = wait_idle(scene.forwarder)
    rss_after = vm_rss(pid)
    dropped = counted_drops(drops_before, kernel_drops(path))
    delivered = arrived() - delivered_before
    totals = status_totals(idle.value)
    assert totals is not None
    figures = {
        "sent": int(summary["sent"]),
        "delivered": delivered,
        "dropped_by_the_kernel": dropped,
        "unaccounted": int(summary["sent"]) - delivered - sum(dropped.values()),
        # Machine-wide (every namespace's backlog, other tests' too): shown, not counted.
        "softnet_dropped_on_the_machine": softnet_dropped() - softnet_before,
        "seconds": round(summary["seconds"], 1),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
    }
    record_property("flood", figures)
    print("flood:", figures)
    assert figures["sent"] == 1_000_000
    # Every datagram is accounted for: forwarded and delivered, or dropped where the kernel counts it (a
    # full receive buffer or backlog when the sender outran the forwarder); the forwarder dropped none.
    assert figures["unaccounted"] == 0, figures
    assert totals[1] == 0, idle.value
    # + the wake-up through the spare, + what the kernel dropped after the forwarder sent it (the backend's
    # backlog, full under a raw path's burst of 64 sends, drops at the veth)
    assert totals[0] == 1 + arrived() + dropped.get("host -> backend", 0), (idle.value, dropped)
    flows = [
        int(status.rpartition("; ")[2].split()[0]) for status in scene.forwarder.notify.values("STATUS")[1:]
    ]
    assert max(flows) == 2000, flows
    assert rss_after - rss_before < 8 * 1024, figures  # a leak of 9 bytes per datagram would exceed it
    scene.check_spare_route(b"spare still works")
    scene.assert_alive_and_quiet()


FLOOD_RATE = 50_000


def kernel_drops(nodes: list[LabNode]) -> dict[str, int]:
    """Where the kernel counts a UDP datagram it drops, per node of the path: UDP receive errors (a full
    receive buffer among them: RcvbufErrors is part of InErrors), IP input discards, and each interface's
    rx/tx drops (a veth whose peer's backlog is full drops at transmit, the backlog's drop)."""
    counters: dict[str, int] = {}
    for node in nodes:
        snmp_counters = snmp(node)
        for name in ("Udp.InErrors", "Ip.InDiscards"):
            counters[f"{node.name} {name}"] = snmp_counters[name]
        with IPRoute(netns=node.namespace) as ipr:
            for link in ipr.get_links():
                stats = link.get_attr("IFLA_STATS64")
                ifname = link.get_attr("IFLA_IFNAME")
                counters[f"{node.name} {ifname} rx_dropped"] = stats["rx_dropped"]
                counters[f"{node.name} {ifname} tx_dropped"] = stats["tx_dropped"]
    return counters


def counted_drops(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The drops between two kernel_drops() readings, each counted once: a veth drop may be counted at the
    sending end (tx_dropped) and at the receiving end (rx_dropped) alike, so a link direction's drops are
    the larger of the two (interfaces are named to-PEER)."""
    delta = {key: after[key] - before.get(key, 0) for key in after}
    drops = {key: value for key, value in delta.items() if " Udp." in key or " Ip." in key}
    for key, value in delta.items():
        node, _, rest = key.partition(" ")
        ifname, _, kind = rest.partition(" ")
        if kind != "tx_dropped" or not ifname.startswith("to-"):
            continue
        received = delta.get(f"{ifname.removeprefix('to-')} to-{node} rx_dropped", 0)
        drops[f"{node} -> {ifname.removeprefix('to-')}"] = max(value, received)
    return {key: value for key, value in drops.items() if value}


def test_counted_drops_count_a_veth_drop_once_and_every_receive_error() -> None:
    before = {"client to-host tx_dropped": 5, "host to-client rx_dropped": 5, "host Udp.InErrors": 10}
    after = {
        "client to-host tx_dropped": 7,  # a full backlog in the host: counted at the sending end...
        "host to-client rx_dropped": 7,  # ... and at the receiving one: the same 2 datagrams
        "host to-client tx_dropped": 0,
        "client to-host rx_dropped": 0,
        "host Udp.InErrors": 13,
        "backend Ip.InDiscards": 1,
        "host to-backend tx_dropped": 4,  # a drop only the sending end counted
        "backend to-host rx_dropped": 0,
    }
    assert counted_drops(before, after) == {
        "client -> host": 2,
        "host Udp.InErrors": 3,
        "backend Ip.InDiscards": 1,
        "host -> backend": 4,
    }


def softnet_dropped() -> int:
    """Datagrams dropped at full per-CPU backlogs on this machine (/proc/net/softnet_stat, 2nd column)."""
    with open("/proc/net/softnet_stat") as handle:
        return sum(int(line.split()[1], 16) for line in handle)


def wait_idle(forwarder: ForwarderUnderTest) -> NotifyEvent:
    """Wait for a status interval without traffic, so every datagram sent so far has been handled."""
    return forwarder.notify.wait_for(
        "STATUS",
        lambda status: status.startswith("0 datagrams forwarded"),
        after=time.monotonic(),
        timeout=30,
    )


def vm_rss(pid: int) -> int:
    """Resident set size of `pid` in KiB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# Sent with scapy from the client, in this order, to the forwarder's first port. Only the datagrams marked
# valid can reach a socket; the kernel discards the others before the forwarder could see them.
MIXED_TRAFFIC = r"""
import sys
from scapy.all import IP, UDP, Raw, conf, fragment, raw, send

conf.verb = 0
src, dst, dport = sys.argv[1], sys.argv[2], int(sys.argv[3])


def udp(payload, sport=4000, **fields):
    return IP(src=src, dst=dst) / UDP(sport=sport, dport=dport, **fields) / Raw(payload)


def fragments(datagram_id, body, stop=None):
    # Raw fragments of `body` (UDP header and payload), 1480 bytes each; offsets may exceed 65535.
    pieces = [body[offset : offset + 1480] for offset in range(0, len(body), 1480)]
    more = ["MF"] * (len(pieces) - 1) + [0]
    return [
        IP(src=src, dst=dst, id=datagram_id, proto=17, frag=index * 185, flags=more[index]) / Raw(piece)
        for index, piece in enumerate(pieces)
    ][:stop]


maximal = bytes(index % 251 for index in range(65507))
oversize = raw(UDP(sport=4000, dport=dport, len=0) / Raw(bytes(65600)))  # 65608 B: more than IP can carry
packets = (
    [udp(b"first")]
    + fragment(udp(maximal), fragsize=1480)  # the largest IPv4 UDP datagram, in 45 fragments
    + fragments(7001, oversize)  # every fragment of a datagram that reassembles beyond 65535 B
    + fragments(7002, raw(UDP(sport=4000, dport=dport) / Raw(bytes(30000))), stop=-1)  # last one missing
    + [udp(b"short", len=100)]  # UDP length claims more than the packet holds
    + [udp(b"checksum", chksum=0x1234)]  # a wrong UDP checksum
    + [udp(b"")]
    + [udp(b"last")]
)
send(packets)
"""


def test_oversize_incomplete_and_malformed_datagrams_mixed_into_valid_traffic_leave_it_intact(
    lab: Lab,
) -> None:
    scene = Scene.start(lab)
    lab["host"].sysctl("net.ipv4.ipfrag_time", "1")  # an incomplete datagram expires after a second
    backend = lab["backend"].udp_socket(*BACKEND)
    backend.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)
    backend.settimeout(10)
    before = snmp(lab["host"])

    lab["client"].check(
        [sys.executable, "-c", MIXED_TRAFFIC, CLIENT, HOST, str(BACKEND[1])], env=python_env(), timeout=60
    )

    maximal = bytes(index % 251 for index in range(65507))
    source = (CLIENT, 4000)
    assert received(backend, 4) == [(b"first", source), (maximal, source), (b"", source), (b"last", source)]
    scene.wait_totals(forwarded=5, dropped=0)
    # The kernel discarded the rest, and counted it: the forwarder never saw them.
    wait_until(lambda: snmp(lab["host"])["Ip.ReasmTimeout"] > before["Ip.ReasmTimeout"], "expiry", 10)
    after = snmp(lab["host"])
    assert after["Ip.ReasmFails"] - before["Ip.ReasmFails"] == 2  # the oversize and the incomplete one
    assert after["Udp.InErrors"] - before["Udp.InErrors"] == 2  # the short one and the bad checksum
    assert after["Udp.InCsumErrors"] - before["Udp.InCsumErrors"] == 1
    scene.check_spare_route(b"spare still works")
    backend.settimeout(0.2)
    with pytest.raises(TimeoutError):
        backend.recvfrom(65535)
    scene.assert_alive_and_quiet()


def test_truncated_datagrams_mixed_into_valid_traffic_are_counted_and_never_forwarded(lab: Lab) -> None:
    """The forwarder's 64 KiB buffer is larger than any UDP payload, so the kernel never truncates for it;
    here the engine itself runs in the host with a 1 KiB buffer, on real traffic, so MSG_TRUNC is real."""
    lab.build(faults_deployment())
    backend = lab["backend"].udp_socket(*BACKEND)
    backend.settimeout(10)
    listener = lab["host"].udp_socket(HOST, 27002)
    listener.setblocking(False)
    route = Route(ListeningSocket(listener, "small"), Destination(socket.AF_INET, *BACKEND))

    engine = Engine([route], Notifier({}), ForwardingMachine(), buffer_size=1024)
    lab.defer(engine.close)
    client = lab["client"].udp_socket(CLIENT, 0)
    payloads = [b"one", bytes(1025), b"two", bytes(65507), b"x" * 1024, b""]
    for payload in payloads:
        client.sendto(payload, (HOST, 27002))

    def drained() -> bool:
        netns.run_in(lab["host"].namespace, lambda: drain(engine, route))  # its flow sockets live there
        counters = engine.counters
        return counters.forwarded + sum(counters.dropped.values()) == len(payloads)

    wait_until(drained, "the engine to handle every datagram", 10)
    assert received(backend, 4) == [
        (payload, client.getsockname()) for payload in (b"one", b"two", b"x" * 1024, b"")
    ]
    assert (engine.counters.forwarded, dict(engine.counters.dropped)) == (4, {"truncated": 2})
