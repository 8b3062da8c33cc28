"""The benchmark's lab and what one measurement is: a sender, the host where a contender forwards, and a
backend whose nftables counter counts what was delivered (or, in a reply-heavy case, echoes every datagram
in its kernel, and the client's counter counts the replies that came back).

    client (sender) 198.51.100.10 --- 198.51.100.1 [host: contender] 192.0.2.1 --- 192.0.2.2 backend
"""

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from netlab.errors import LabTimeoutError, NetlabError
from netlab.lab.lab import Lab
from netlab.lab.nft import apply_ruleset, counter_packets, delete_table
from netlab.lab.node import LabNode
from netlab.lab.offload import set_features
from netlab.lab.process import python_env
from netlab.lab.tproxy import steer
from netlab.service.relay import RELAY_TABLE, install_relay_routing
from netlab.topology.shipped import seed_deployment

SENDER_ADDRESS = "198.51.100.10"
HOST_ADDRESS = "198.51.100.1"
BACKEND_ADDRESS = "192.0.2.2"
HOST_BACKEND_SIDE = "192.0.2.1"
PORT = 27000
SENDER_CPU = 0
CONTENDER_CPU = 1  # every userspace contender is pinned here, the sender's other core
RPS_MASK = "2"  # the host's receive work goes to CPU 1 while the sender runs on CPU 0
REPLY_TABLE = RELAY_TABLE  # the host's routing table that delivers the backend's replies to local sockets
REPLY_SOCKET_PORT = (
    26999  # the port of a contender's one tproxy reply socket (the forwarder's --reply-tproxy)
)

BACKEND_COUNTER = f"""table inet netlab_bench {{
    counter delivered {{ }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        meta l4proto udp udp dport {PORT} counter name "delivered" drop
    }}
}}
"""
# The backend's kernel answers every benchmark datagram: stateless rewrites at ingress (addresses and
# ports swapped; the client is the sender, whose address every contender presents) and straight back out.
# The checksum is set to 0 ("none" over IPv4) last: nft's port rewrite adjusts the checksum incrementally
# even when it is 0, so a datagram the forwarder's raw path sent without one (checksum 0, its default) came
# back with a wrong one, and the host dropped every reply (UDP InCsumErrors).
BACKEND_ECHO = f"""table netdev netlab_echo {{
    counter echoed {{ }}
    chain ingress {{
        type filter hook ingress device "to-host" priority filter; policy accept;
        ip daddr {BACKEND_ADDRESS} udp dport {PORT} counter name "echoed" ip saddr set {BACKEND_ADDRESS} \\
            ip daddr set {SENDER_ADDRESS} udp dport set udp sport udp sport set {PORT} udp checksum set 0 \\
            fwd ip to {HOST_BACKEND_SIDE} device "to-host"
    }}
}}
"""
CLIENT_COUNTER = f"""table inet netlab_bench {{
    counter replies {{ }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        ip saddr {HOST_ADDRESS} udp sport {PORT} counter name "replies" drop
    }}
}}
"""
HOST_DNAT = f"""table ip netlab_dnat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {HOST_ADDRESS} udp dport {PORT} dnat to {BACKEND_ADDRESS}:{PORT}
    }}
}}
"""
HOST_SINK = f"""table inet netlab_sink {{
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        meta l4proto udp udp dport {PORT} counter drop
    }}
}}
"""


@dataclass(frozen=True)
class Case:
    """One traffic shape: payload size in bytes and number of concurrent flows (source ports); with `echo`
    the backend answers every datagram and what counts is the replies delivered back to the client."""

    payload: int
    flows: int
    echo: bool = False

    def __str__(self) -> str:
        flows = f"{self.flows} flow{'s' if self.flows > 1 else ''}"
        return f"{self.payload} B x {flows}{' echo' if self.echo else ''}"


@dataclass
class Run:
    """One measured run of one contender on one case."""

    contender: str
    case: Case
    offered: int
    delivered: int
    seconds: float
    busy_cpu_seconds: float
    rate_limit: float = 0.0
    core_cpu_seconds: float = 0.0  # busy time of CONTENDER_CPU alone
    process_cpu_seconds: float | None = None  # the contender's own processes (None: the kernel forwards)
    forwarded: int = 0  # datagrams counted at the backend (in an echo case `delivered` counts replies)

    @property
    def delivered_per_second(self) -> float:
        return self.delivered / self.seconds

    @property
    def offered_per_second(self) -> float:
        return self.offered / self.seconds

    @property
    def loss(self) -> float:
        return max(0.0, 1 - self.delivered / self.offered) if self.offered else 0.0

    @property
    def cpu_us_per_datagram(self) -> float:
        return self.busy_cpu_seconds / self.delivered * 1e6 if self.delivered else float("nan")

    @property
    def core_us_per_datagram(self) -> float:
        return self.core_cpu_seconds / self.delivered * 1e6 if self.delivered else float("nan")

    @property
    def process_us_per_datagram(self) -> float:
        if self.process_cpu_seconds is None or not self.delivered:
            return float("nan")
        return self.process_cpu_seconds / self.delivered * 1e6


@dataclass(frozen=True)
class Contender:
    """A way to forward on the host: `setup(bench, case)` is a context manager that starts it, lets traffic
    run and tears it down.

    `userspace` contenders run pinned to CONTENDER_CPU and, when they relay replies, get the backend's
    replies delivered to their local (transparent) sockets by policy routing, or with `tproxy_replies`
    steered by nftables tproxy to one socket on REPLY_SOCKET_PORT. `proxy_v2` makes the sender
    prefix a PROXY v2 header. `requires` lists the executables or files it needs; when one is missing the
    contender is skipped and `package` says what to install."""

    name: str
    setup: Callable[["BenchLab", Case], Any]
    rps: bool = False
    userspace: bool = True
    relays_replies: bool = False
    tproxy_replies: bool = False
    proxy_v2: bool = False
    requires: tuple[str, ...] = ()
    package: str = ""

    def missing(self) -> str | None:
        """Why this contender cannot run here (a required file or command is absent), or None."""
        for need in self.requires:
            found = os.path.exists(need) if "/" in need else shutil.which(need) is not None
            if not found:
                return f"{need} not found (install the Debian package {self.package})"
        return None

    def runs(self, case: Case) -> bool:
        """Whether this contender takes part in `case`: echo cases need a contender that relays replies."""
        return self.relays_replies or not case.echo


def busy_cpu_seconds(cpu: int | None = None) -> float:
    """CPU time all cores (or core `cpu`) spent not idle since boot (from /proc/stat), in seconds."""
    label = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat") as handle:
        for line in handle:
            name, *values = line.split()
            if name == label:
                fields = [int(value) for value in values]
                idle = fields[3] + fields[4]  # idle + iowait
                return (sum(fields[:8]) - idle) / 100.0  # USER_HZ is 100 on Linux
    raise NetlabError(f"no {label!r} line in /proc/stat")


def session_cpu_seconds(session: int) -> float:
    """User and system time of every process (all threads) in session `session`, in seconds.

    A contender started by the lab leads its own session, so this covers nginx's worker and Go's threads
    too, and unlike /proc/stat it does not count what other programs on a shared machine do. Softirq work
    done inline in the contender's system calls (veth delivers to the backend that way) is charged to it.
    """
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[3]) == session:  # fields after the name: state ppid pgrp session ... utime stime
            total += int(fields[11]) + int(fields[12])
    return total / 100.0  # USER_HZ


class BenchLab:
    """The benchmark's lab: topology, counters, sender, and the knobs contenders turn."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        lab.build(seed_deployment())
        self.sender: LabNode = lab["client"]
        self.host: LabNode = lab["host"]
        self.backend: LabNode = lab["backend"]
        # A UDP GSO run (the forwarder's --gso) would cross the veth as one super-packet and count as one
        # packet at the backend: without the veth's UDP segmentation offload the host's kernel cuts it into
        # its datagrams before the veth, as for a NIC without it, and that work stays on the host's core.
        set_features(self.host, "to-backend", {"tx-udp-segmentation": False})
        self.nft(self.backend, BACKEND_COUNTER)
        self.nft(self.sender, CLIENT_COUNTER)

    def nft(self, node: LabNode, ruleset: str) -> None:
        apply_ruleset(node, ruleset, label="bench")

    def counter(self, node: LabNode, family: str, table: str, name: str) -> int:
        """The packet count of the named nftables counter `name` of `table` in `node`."""
        return counter_packets(node, family, table, name)

    def forwarded(self, case: Case) -> int:
        """The backend's kernel count of benchmark datagrams that reached it."""
        if case.echo:
            return self.counter(self.backend, "netdev", "netlab_echo", "echoed")
        return self.counter(self.backend, "inet", "netlab_bench", "delivered")

    def delivered(self, case: Case) -> int:
        """What `case` counts as delivered: datagrams at the backend, or replies back at the client."""
        if case.echo:
            return self.counter(self.sender, "inet", "netlab_bench", "replies")
        return self.forwarded(case)

    def settle(self, case: Case, timeout: float = 5.0) -> int:
        """Wait until datagrams in flight have arrived: the counter stops moving (with a deadline)."""
        deadline = time.monotonic() + timeout
        last = self.delivered(case)
        while time.monotonic() < deadline:
            time.sleep(0.05)  # sampling interval of a measurement, not a wait for an event
            now = self.delivered(case)
            if now == last:
                return now
            last = now
        return last

    def set_rps(self, enabled: bool) -> None:
        value = RPS_MASK if enabled else "0"
        self.host.check(
            [sys.executable, "-m", "netlab.programs.sysfs", "to-client/queues/rx-0/rps_cpus", value],
            env=python_env(),
        )

    @contextlib.contextmanager
    def echoing(self) -> Iterator[None]:
        """The backend's kernel answers every benchmark datagram while this lasts."""
        self.nft(self.backend, BACKEND_ECHO)
        try:
            yield
        finally:
            delete_table(self.backend, "netdev", "netlab_echo")

    @contextlib.contextmanager
    def replies_to_local_sockets(self) -> Iterator[None]:
        """Policy routing on the host that delivers the backend's UDP replies from PORT locally, where a
        transparent proxy's socket bound to the client's address and port receives them (the replies of
        a relaying userspace contender); everything else from the backend is still forwarded."""
        routing = install_relay_routing(
            self.host, BACKEND_ADDRESS, PORT, table=REPLY_TABLE, priority=REPLY_TABLE
        )
        try:
            yield
        finally:
            routing.remove()

    @contextlib.contextmanager
    def replies_steered(self) -> Iterator[None]:
        """nftables tproxy on the host that steers the backend's UDP replies from PORT, arriving from the
        backend's side, to the one socket on REPLY_SOCKET_PORT (with its mark routed to a local table);
        everything else from the backend is still forwarded."""
        steering = steer(
            self.host,
            version=4,
            to_port=REPLY_SOCKET_PORT,
            saddr=BACKEND_ADDRESS,
            sports=PORT,
            iifname="to-backend",
        )
        try:
            yield
        finally:
            steering.remove()

    def blast(self, case: Case, duration: float, rate: float = 0.0, **extra: Any) -> dict[str, float]:
        """Run the sender for `duration` seconds (`extra`: more BlastOptions, e.g. proxy_v2, count)."""
        options = {
            "src": SENDER_ADDRESS,
            "dst": HOST_ADDRESS,
            "dport": PORT,
            "flows": case.flows,
            "size": case.payload,
            "duration": duration,
            "rate": rate,
            "cpu": SENDER_CPU,
            **extra,
        }
        output = self.sender.check(
            [sys.executable, "-m", "netlab.programs.blaster", json.dumps(options)],
            env=python_env(),
            timeout=duration + 30,
        )
        return dict(json.loads(output.strip().splitlines()[-1]))

    def wait_forwarding(self, contender: Contender, case: Case, handle: Any, timeout: float = 15.0) -> None:
        """Send a few datagrams until the counter moves: the contender is up and forwarding (a nginx worker
        or a Go runtime has no readiness notification); fails with its log after `timeout`."""
        before = self.delivered(case)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.blast(case, 0.05, count=min(case.flows, 16), proxy_v2=contender.proxy_v2)
            if self.settle(case) > before:
                return
        log = handle.output() if hasattr(handle, "output") else ""
        raise LabTimeoutError(f"{contender.name} delivered nothing in {timeout}s ({case}); log:\n{log}")

    def measure(self, contender: Contender, case: Case, duration: float, rate: float = 0.0) -> Run:
        """Set the contender up, warm it up, then send for `duration` and count what arrived."""
        self.set_rps(contender.rps)
        with contextlib.ExitStack() as stack:
            if case.echo:
                stack.enter_context(self.echoing())
                if contender.tproxy_replies:
                    stack.enter_context(self.replies_steered())
                elif contender.userspace:
                    stack.enter_context(self.replies_to_local_sockets())
            handle = stack.enter_context(contender.setup(self, case))
            self.wait_forwarding(contender, case, handle)
            # warm-up: every flow's session or socket, caches, conntrack entries
            self.blast(case, 0.1, rate=20000, proxy_v2=contender.proxy_v2)
            self.settle(case)
            before, forwarded_before = self.delivered(case), self.forwarded(case)
            pid = getattr(handle, "pid", None)
            own_before = session_cpu_seconds(pid) if pid else 0.0
            cpu_before, core_before = busy_cpu_seconds(), busy_cpu_seconds(CONTENDER_CPU)
            sent = self.blast(case, duration, rate, proxy_v2=contender.proxy_v2)
            after = self.settle(case)
            cpu = busy_cpu_seconds() - cpu_before
            core = busy_cpu_seconds(CONTENDER_CPU) - core_before
            own = session_cpu_seconds(pid) - own_before if pid else None
            forwarded = self.forwarded(case) - forwarded_before
        return Run(
            contender.name,
            case,
            int(sent["sent"]),
            after - before,
            float(sent["seconds"]),
            cpu,
            rate,
            core_cpu_seconds=core,
            process_cpu_seconds=own,
            forwarded=forwarded,
        )

    def sender_solo_rate(self, case: Case, duration: float) -> float:
        """How fast the sender alone can go: the host drops everything on arrival."""
        self.set_rps(True)
        self.nft(self.host, HOST_SINK)
        try:
            sent = self.blast(case, duration)
        finally:
            delete_table(self.host, "inet", "netlab_sink")
        return float(sent["sent"]) / float(sent["seconds"])
