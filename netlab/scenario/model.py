"""A validated scenario as data: what netlab.scenario.load produces and netlab.scenario.run executes."""

from dataclasses import dataclass, field
from typing import Any

from netlab.addresses import format_endpoint
from netlab.topology.model import Topology


def counted(count: int, noun: str) -> str:
    """`count` and `noun` in the right number for a report line: '1 item', '2 items'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass(frozen=True)
class Endpoint:
    """A node and a UDP port of it, written NODE:PORT."""

    node: str
    port: int

    def __str__(self) -> str:
        return f"{self.node}:{self.port}"


@dataclass
class ForwarderSpec:
    node: str
    listen: list[str]
    destinations: list[str]
    fdnames: list[str] | None = None
    args: list[str] = field(default_factory=list)
    held_sockets: bool = False


@dataclass
class SetupStep:
    node: str
    action: str  # sysctl, command, background or nft
    value: Any


@dataclass
class EchoSpec:
    node: str
    ports: list[int]


@dataclass
class ReplyPathSpec:
    """How the backend's replies get back: direct (the host rewrites their source: backend,
    backend_network, host_address) or relay (the relay routing for each backend address and its ports,
    and the forwarder runs with --reply relay; with reply_tproxy, tproxy steering to that one reply socket
    instead, and --reply-tproxy)."""

    node: str
    backend: str
    backend_network: str
    host_address: str
    mode: str = "direct"
    relay: dict[str, list[int]] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)  # backend port -> host port, learned from [forwarder]
    reply_tproxy: int | None = None  # relay: the one reply socket's port (--reply-tproxy), steered by tproxy


@dataclass
class TrafficSpec:
    node: str
    src: str | None
    sport: int
    dst: str
    dport: int
    payload: bytes
    count: int = 1
    fragment_size: int = 0
    expect_reply: bool = False
    reply_contains: str | None = None
    within: float = 15.0  # seconds to wait for the reply (a cold start of the forwarder included)

    def describe(self) -> str:
        src = format_endpoint(self.src, self.sport) if self.src else f"{self.node}:{self.sport}"
        times = f"{self.count} x " if self.count != 1 else ""
        return f"{times}{len(self.payload)} B from {src} to {format_endpoint(self.dst, self.dport)}"


@dataclass
class ArrivesSpec:
    at: Endpoint
    src: str | None
    payload: bytes | None
    size: int | None
    count: int = 1
    within: float = 3.0

    def describe(self) -> str:
        what = f"{self.count} datagrams arrive" if self.count != 1 else "a datagram arrives"
        parts = [f"{what} at {self.at}"]
        if self.src:
            parts.append(f"from {self.src}")
        if self.size is not None:
            parts.append(f"intact: the {self.size} B pattern")
        elif self.payload is not None:
            parts.append(f"with payload {self.payload[:24]!r}" + ("..." if len(self.payload) > 24 else ""))
        return " ".join(parts)


@dataclass
class Expectations:
    arrives: list[ArrivesSpec] = field(default_factory=list)
    nothing_else: bool = True
    nothing_at: list[Endpoint] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    exit_code: int | None = None
    doctor_names: list[str] | None = None


@dataclass
class Scenario:
    """A validated scenario, ready for netlab.scenario.run."""

    name: str
    source: str
    description: str
    topology: Topology
    forwarder: ForwarderSpec | None
    setup: list[SetupStep]
    echo: EchoSpec | None
    reply_path: ReplyPathSpec | None
    traffic: list[TrafficSpec]
    expect: Expectations
