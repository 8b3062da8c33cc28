"""What open flows cost the forwarder: its RSS, the kernel's slab memory and its file descriptors, measured
with many flows open, on each send path (the raw one holds no socket per flow, the per-client one does)."""

import os
import resource
import time
from dataclasses import dataclass

from netlab.bench.contenders import FORWARDER_ARGS, SOCKETS_PATH, socket_activated
from netlab.bench.lab import BenchLab, Case
from netlab.errors import LabTimeoutError
from netlab.programs.blaster import FIRST_PORT
from netlab.service.activation import ForwarderUnderTest
from netlab.service.notify import NotifyEvent
from netlab.service.status import open_flows


def kib_field(path: str, name: str) -> int:
    """A `Name:   N kB` field of a /proc file, in KiB."""
    with open(path) as handle:
        for line in handle:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise LabTimeoutError(f"no {name} in {path}")


# The contenders whose flows are measured, and the forwarder arguments that make each.
MEASURED_PATHS: dict[str, tuple[str, ...]] = {"forwarder": (), "forwarder-sockets": SOCKETS_PATH}
# Per-client sockets cost one descriptor each: the measurement needs this many more than it has flows.
FD_HEADROOM = 1024


def open_fds(pid: int) -> int:
    """How many file descriptors process `pid` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class FlowMemory:
    """What `flows` open flows cost the forwarder `contender`: its RSS, the kernel's slab memory (socket
    structures) and its file descriptors (one per flow on the per-client sockets path)."""

    flows: int
    rss_kib_before: int
    rss_kib_after: int
    slab_kib_delta: int
    contender: str = "forwarder"
    fds_before: int = 0
    fds_after: int = 0

    @property
    def rss_bytes_per_flow(self) -> float:
        return (self.rss_kib_after - self.rss_kib_before) * 1024 / self.flows

    @property
    def kernel_bytes_per_flow(self) -> float:
        return self.slab_kib_delta * 1024 / self.flows

    @property
    def fds_per_flow(self) -> float:
        return (self.fds_after - self.fds_before) / self.flows


def wait_status_after(forwarder: ForwarderUnderTest, moment: float) -> NotifyEvent:
    """The first STATUS= with a flow count the forwarder sends after `moment` (time.monotonic())."""
    return forwarder.notify.wait_for(
        "STATUS", lambda value: open_flows(value) > 0, timeout=20, after=moment, is_alive=forwarder.is_running
    )


# The flows one source address can open: the blaster's source ports run from its first port to 65535.
MAX_FLOWS = 65535 - FIRST_PORT + 1


def measure_flow_memory(bench: BenchLab, flows: int = 50_000, contender: str = "forwarder") -> FlowMemory:
    """Open `flows` flows in one forwarder (its cap raised to fit) on the send path of `contender` (a key
    of MEASURED_PATHS) and read its RSS, the slab growth and its file descriptors.

    On the per-client sockets path each flow is a socket, so RLIMIT_NOFILE bounds the count; without
    CAP_SYS_RESOURCE the hard limit cannot be raised, and the measurement uses as many flows as it allows
    (the report says how many); one source address has at most MAX_FLOWS ports. The raw path holds no
    descriptor per flow and takes them all. On a loaded
    machine a flow's datagrams may all be lost; the count is then the flows the forwarder reports open
    once the traffic has settled, not the flows sent.
    """
    extra = MEASURED_PATHS[contender]
    # One source address: a flow is a source port, and the blaster's ports start at FIRST_PORT.
    flows = min(flows, MAX_FLOWS)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if extra == SOCKETS_PATH and hard != resource.RLIM_INFINITY:
        flows = min(flows, hard - FD_HEADROOM)
    limit = flows + FD_HEADROOM if hard == resource.RLIM_INFINITY else min(flows + FD_HEADROOM, hard)
    prefix = ["prlimit", f"--nofile={limit}:{limit}", "--"]
    args = [*FORWARDER_ARGS, *extra, "--max-flows", str(flows + 16), "--stats-interval", "1"]
    bench.set_rps(False)
    with socket_activated(bench, None, args, command_prefix=prefix) as forwarder:
        pid = forwarder.process.pid
        status = f"/proc/{pid}/status"
        # The activating datagram opened a flow already: count only the flows the blast adds.
        initial = open_flows(wait_status_after(forwarder, time.monotonic()).value)
        rss_before = kib_field(status, "VmRSS")
        slab_before = kib_field("/proc/meminfo", "Slab")
        fds_before = open_fds(pid)
        # Every flow sends a few datagrams, paced well below saturation so that none is lost to overload.
        bench.blast(Case(64, flows), duration=max(2.0, flows / 50_000), rate=50_000)
        bench.settle(Case(64, flows))
        settled = time.monotonic()
        # A STATUS= written after the traffic settled (every second) carries the final flow count.
        final = open_flows(wait_status_after(forwarder, settled).value)
        rss_after = kib_field(status, "VmRSS")
        slab_after = kib_field("/proc/meminfo", "Slab")
        fds_after = open_fds(pid)
    return FlowMemory(
        final - initial, rss_before, rss_after, slab_after - slab_before, contender, fds_before, fds_after
    )
