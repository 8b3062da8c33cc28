"""Scenario files: a topology, how the forwarder is started, the traffic and the expectations, as TOML.
This module reads and validates them (errors name the file, the element and the value); scenario_run
executes them. A bug report becomes one new file in fixtures/scenarios, which is one more test.

    # Pins: <which caveat or bug of the C original this scenario holds down>
    description = "..."
    topology = "seed"                      # shipped name, a file (relative to this one), or [topology]
    [forwarder]                            # optional: started under systemd-socket-activate
    node = "host"                          # default: the topology's host role, else "host"
    listen = ["198.51.100.1:27000"]
    destinations = ["192.0.2.2:27000"]     # or NAME=DEST with fdnames
    fdnames = ["game"]                     # FileDescriptorName= of each listen socket (optional)
    args = ["--stats-interval", "0.2"]     # more forwarder options
    held_sockets = false                   # true: the lab holds the sockets, as PID 1 would
    [[setup]]                              # optional, in order, before anything is started
    node = "host"                          # and one of: sysctl = { KEY = VALUE }, command = [ARGV],
    sysctl = { "net.ipv4.ip_forward" = 0 } #   background = [ARGV], nft = "RULESET"
    [echo]                                 # optional: netlab.echo answering on these ports
    node = "backend"
    ports = [27000]
    [reply_path]                           # optional: the notrack + stateless rewrite on the host
    backend = "192.0.2.2"
    backend_network = "192.0.2.0/24"
    host_address = "198.51.100.1"
    # mode = "relay"                       # instead: route the backend's replies to the forwarder
    #                                      # (netlab.relayroute) and run it with --reply relay; then
    # ports = [5353]                       # the backend's reply ports (default: its destinations' ports)
    # icmp_errors = true                   # also deliver the backend's ICMP errors to the flow sockets
    # reassemble = true                    # connection tracking on, so fragmented replies match the rule
    # backend = ["192.0.2.2", "2001:db8:2::2"]  # relay: a list for the IPv6 twin
    # match = "reply-port"                 # relay: or "udp" / "everything", rules too wide (for the doctor)
    [[traffic]]
    from = "client"
    src = "203.0.113.7"                    # spoofed; default the node's own address
    sport = 4242
    to = "198.51.100.1:27000"
    payload = "hello"                      # or payload_hex = "00ff", or size = 65507
    count = 1
    fragment_size = 0
    family = "ipv4"                        # optional: checked against `to`
    expect_reply = false                   # true: a connect()ed socket waits for the reply
    reply_contains = "seen=198.51.100.10:" # optional, with expect_reply
    [[expect.arrives]]
    at = "backend:27000"
    src = "203.0.113.7:4242"               # as netlab.expect: ip:port, [v6]:port, ip, *:port, network
    payload = "hello"                      # or payload_hex, or size (the pattern `size` sent, intact)
    count = 1                              # this many such datagrams; within = SECONDS (default 3)
    [expect]
    nothing_else = true                    # default: nothing beyond the expected arrives at those ports
    nothing_at = ["backend:27003"]         # nothing at all arrives there
    status = ["family-mismatch 1"]         # each text appears in some STATUS= line
    exit_code = 78                         # the forwarder exits by itself so; default: keeps running
    doctor_names = ["ip_forward"]          # `netlab doctor` names exactly these checks as missing
"""

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forwarder.destination import parse_destination
from netlab.crafted import MAX_PAYLOAD, MAX_PAYLOAD_IPV6
from netlab.errors import ScenarioError
from netlab.fixtures import scenario_path, topology_path
from netlab.topology import Topology
from netlab.topology_file import load_topology_file, topology_from_dict

_TOP = {"description", "topology", "forwarder", "setup", "echo", "reply_path", "traffic", "expect"}
_FORWARDER = {"node", "listen", "destinations", "fdnames", "args", "held_sockets"}
_SETUP = {"node", "sysctl", "command", "background", "nft"}
_SETUP_ACTIONS = ("sysctl", "command", "background", "nft")
_ECHO = {"node", "ports"}
_REPLY = {
    "node", "mode", "backend", "backend_network", "host_address", "ports", "icmp_errors", "reassemble",
    "match",
}  # fmt: skip
_MATCHES = ("reply-port", "udp", "everything")
_TRAFFIC = {
    "from", "src", "sport", "to", "payload", "payload_hex", "size", "count", "fragment_size", "family",
    "expect_reply", "reply_contains",
}  # fmt: skip
_EXPECT = {"arrives", "nothing_else", "nothing_at", "status", "exit_code", "doctor_names"}
_ARRIVES = {"at", "src", "payload", "payload_hex", "size", "count", "within"}


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
    action: str  # one of _SETUP_ACTIONS
    value: Any


@dataclass
class EchoSpec:
    node: str
    ports: list[int]


@dataclass
class ReplyPathSpec:
    node: str
    backend: str
    backend_network: str = ""
    host_address: str = ""
    mode: str = "direct"  # "relay": relay routing on the host, the forwarder runs with --reply relay
    ports: list[int] = field(default_factory=list)
    icmp_errors: bool = False
    reassemble: bool = False
    backends: list[str] = field(default_factory=list)  # relay: every backend (the IPv6 twin too)
    match: str = "reply-port"  # relay: what the rule selects; "udp" and "everything" are broken set-ups


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

    def describe(self) -> str:
        src = f"{self.src}:{self.sport}" if self.src else f"{self.node}:{self.sport}"
        times = f"{self.count} x " if self.count != 1 else ""
        return f"{times}{len(self.payload)} B from {src} to {self.dst}:{self.dport}"


@dataclass
class ArrivesSpec:
    at: Endpoint
    src: str | None
    payload: bytes | None
    size: int | None
    count: int = 1
    within: float = 3.0

    def describe(self) -> str:
        what = f"{self.count} datagrams" if self.count != 1 else "a datagram"
        parts = [f"{what} arrives at {self.at}"]
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
    """A validated scenario, ready for netlab.scenario_run."""

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


def pattern_payload(size: int) -> bytes:
    """The payload `size = N` stands for: netlab.lab.make_payload's position-revealing pattern."""
    return bytes(index % 251 for index in range(size))


class _Reader:
    """Typed access to TOML tables with errors naming the file, the element and the value."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, element: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {element}: {message}")

    def keys(self, table: Mapping[str, Any], allowed: set[str], element: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(element, f"unknown key {key!r}; expected one of {sorted(allowed)}")

    def get(
        self,
        table: Mapping[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        element: str,
        default: Any = None,
    ) -> Any:
        if key not in table:
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            value = None  # TOML true is not an integer
        if not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(f"{element}.{key}", f"expected {names}, got {table[key]!r}")
        return value

    def strings(self, table: Mapping[str, Any], key: str, element: str, default: Any = None) -> Any:
        values = self.get(table, key, list, element, default)
        if values is not None and not all(isinstance(value, str) for value in values):
            raise self.fail(f"{element}.{key}", f"expected a list of strings, got {values!r}")
        return values

    def table(self, data: Mapping[str, Any], key: str, element: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.get(data, key, dict, element)
        return value

    def tables(self, data: Mapping[str, Any], key: str, element: str) -> list[tuple[str, dict[str, Any]]]:
        items = self.get(data, key, list, element, [])
        result = []
        for index, item in enumerate(items):
            where = f"{key}[{index}]"
            if not isinstance(item, dict):
                raise self.fail(where, f"expected a table, got {item!r}")
            result.append((where, item))
        return result

    def node(
        self, table: Mapping[str, Any], key: str, element: str, topology: Topology, default: str | None = None
    ) -> str:
        name = self.get(table, key, str, element, default)
        if name is None:
            raise self.fail(
                element, f"missing {key!r}: expected a node name, one of {sorted(topology.nodes)}"
            )
        if name not in topology.nodes:
            raise self.fail(
                f"{element}.{key}", f"unknown node {name!r}; known nodes: {sorted(topology.nodes)}"
            )
        return str(name)

    def endpoint(self, text: Any, element: str, topology: Topology) -> Endpoint:
        node, _, port = str(text).rpartition(":")
        if not isinstance(text, str) or not port.isdigit() or not 0 < int(port) < 65536:
            raise self.fail(element, f"bad endpoint {text!r}: expected NODE:PORT, e.g. 'backend:27000'")
        if node not in topology.nodes:
            raise self.fail(
                element, f"unknown node {node!r} in {text!r}; known nodes: {sorted(topology.nodes)}"
            )
        return Endpoint(node, int(port))

    def payload(self, table: Mapping[str, Any], element: str, limit: int) -> tuple[bytes | None, int | None]:
        given = [key for key in ("payload", "payload_hex", "size") if key in table]
        if len(given) > 1:
            raise self.fail(element, f"give one of payload, payload_hex or size, not {given}")
        if "payload" in table:
            return self.get(table, "payload", str, element).encode(), None
        if "payload_hex" in table:
            text = self.get(table, "payload_hex", str, element)
            try:
                return bytes.fromhex(text), None
            except ValueError:
                raise self.fail(f"{element}.payload_hex", f"bad hex {text!r}") from None
        size = self.get(table, "size", int, element)
        if size is not None and not 0 <= size <= limit:
            raise self.fail(f"{element}.size", f"{size!r} must be 0 to {limit}")
        return None, size

    def positive(self, table: Mapping[str, Any], key: str, element: str, default: int | float) -> Any:
        kind: tuple[type, ...] = (int,) if isinstance(default, int) else (int, float)
        value = self.get(table, key, kind, element, default)
        if not value > 0:
            raise self.fail(f"{element}.{key}", f"{value!r} must be greater than 0")
        return value


def _address_port(reader: _Reader, text: Any, element: str) -> tuple[str, int]:
    if isinstance(text, str):
        host, _, port = text.rpartition(":")
        host = host.strip("[]") if host.startswith("[") else host
        try:
            ipaddress.ip_address(host)
            if port.isdigit() and 0 < int(port) < 65536 and (":" not in host or text.startswith("[")):
                return host, int(port)
        except ValueError:
            pass
    raise reader.fail(element, f"bad address {text!r}: expected ADDRESS:PORT or [V6ADDRESS]:PORT")


def load_scenario(file_or_name: str | Path) -> Scenario:
    """Read and validate a scenario file, or the shipped scenario of that name."""
    path = Path(file_or_name)
    if not path.is_file():
        path = scenario_path(str(file_or_name))
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{path}: not valid TOML: {error}") from None
    return scenario_from_dict(data, path)


def _topology(reader: _Reader, data: Mapping[str, Any], path: Path) -> Topology:
    value = data.get("topology")
    if isinstance(value, dict):
        return topology_from_dict(value, source=f"{path}: topology")
    if not isinstance(value, str):
        raise reader.fail("topology", f"expected a shipped name, a file or a table, got {value!r}")
    if value.endswith(".toml") or "/" in value:
        file = path.parent / value
        if not file.is_file():
            raise reader.fail("topology", f"no topology file {value!r} next to the scenario ({file})")
        return load_topology_file(file)
    return load_topology_file(topology_path(value))


def _reply_path(
    reader: _Reader,
    table: Mapping[str, Any],
    topology: Topology,
    host: str,
    forwarder: "ForwarderSpec | None",
) -> ReplyPathSpec:
    reader.keys(table, _REPLY, "reply_path")
    mode = reader.get(table, "mode", str, "reply_path", "direct")
    if mode not in ("direct", "relay"):
        raise reader.fail("reply_path.mode", f"{mode!r}: expected 'direct' or 'relay'")
    backends = [table["backend"]] if isinstance(table.get("backend"), str) else table.get("backend")
    if (
        mode == "relay"
        and isinstance(backends, list)
        and backends
        and all(isinstance(b, str) for b in backends)
    ):
        table = {**table, "backend": backends[0]}  # relay mode takes a list: one backend per family
    needed = ("backend", "backend_network", "host_address") if mode == "direct" else ("backend",)
    values = {key: reader.get(table, key, str, "reply_path") for key in needed}
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise reader.fail("reply_path", f"missing {missing}")
    spec = ReplyPathSpec(reader.node(table, "node", "reply_path", topology, host), mode=mode, **values)
    if mode == "direct":
        return spec
    for key in ("backend_network", "host_address"):
        if key in table:
            raise reader.fail(f"reply_path.{key}", "is for mode = 'direct' (the source rewrite)")
    spec.backends = list(backends or [spec.backend])
    spec.match = reader.get(table, "match", str, "reply_path", "reply-port")
    if spec.match not in _MATCHES:
        raise reader.fail("reply_path.match", f"{spec.match!r}: expected one of {list(_MATCHES)}")
    ports = reader.get(table, "ports", list, "reply_path", None)
    if ports is None:
        ports = sorted({port for backend in spec.backends for port in _backend_ports(backend, forwarder)})
        if not ports:
            raise reader.fail(
                "reply_path.ports",
                f"no [forwarder] destination is the backend {spec.backend!r}: give ports = [PORT]",
            )
    if not ports or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
        raise reader.fail("reply_path.ports", f"expected a list of UDP ports, got {ports!r}")
    spec.ports = list(ports)
    spec.icmp_errors = reader.get(table, "icmp_errors", bool, "reply_path", False)
    spec.reassemble = reader.get(table, "reassemble", bool, "reply_path", False)
    return spec


def _backend_ports(backend: str, forwarder: "ForwarderSpec | None") -> list[int]:
    """The ports of the forwarder's destinations at `backend` (a destination without a port uses its
    socket's)."""
    if forwarder is None:
        return []
    wanted = ipaddress.ip_address(backend)
    ports = []
    for text, listen in zip(forwarder.destinations, forwarder.listen, strict=False):
        spec = parse_destination(text)
        try:
            if ipaddress.ip_address(spec.host) != wanted:
                continue
        except ValueError:
            continue
        ports.append(spec.port if spec.port is not None else int(listen.rpartition(":")[2]))
    return sorted(set(ports))


def scenario_from_dict(data: Mapping[str, Any], path: Path) -> Scenario:
    """Validate TOML-shaped scenario data read from `path`."""
    reader = _Reader(str(path))
    reader.keys(data, _TOP, "top level")
    topology = _topology(reader, data, path)
    default_host = (topology.roles.host if topology.roles else None) or "host"

    forwarder = None
    table = reader.table(data, "forwarder", "top level")
    if table is not None:
        reader.keys(table, _FORWARDER, "forwarder")
        listen = reader.strings(table, "listen", "forwarder", [])
        for index, text in enumerate(listen):
            _address_port(reader, text, f"forwarder.listen[{index}]")
        destinations = reader.strings(table, "destinations", "forwarder", [])
        if not listen or not destinations:
            raise reader.fail("forwarder", "needs listen = [ADDR:PORT, ...] and destinations = [DEST, ...]")
        fdnames = reader.strings(table, "fdnames", "forwarder")
        if fdnames is not None and len(fdnames) != len(listen):
            raise reader.fail("forwarder.fdnames", f"{fdnames!r}: expected one name per listen socket")
        forwarder = ForwarderSpec(
            reader.node(table, "node", "forwarder", topology, default_host),
            listen,
            destinations,
            fdnames,
            reader.strings(table, "args", "forwarder", []),
            reader.get(table, "held_sockets", bool, "forwarder", False),
        )

    setup = []
    for where, step in reader.tables(data, "setup", "top level"):
        reader.keys(step, _SETUP, where)
        actions = [key for key in _SETUP_ACTIONS if key in step]
        if len(actions) != 1:
            raise reader.fail(where, f"expected exactly one of {list(_SETUP_ACTIONS)}, got {actions}")
        action = actions[0]
        kind: type = {"sysctl": dict, "nft": str}.get(action, list)
        value = reader.get(step, action, kind, where)
        setup.append(SetupStep(reader.node(step, "node", where, topology), action, value))

    echo = None
    table = reader.table(data, "echo", "top level")
    if table is not None:
        reader.keys(table, _ECHO, "echo")
        ports = reader.get(table, "ports", list, "echo", [])
        if not ports or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
        ):
            raise reader.fail("echo.ports", f"expected a list of UDP ports, got {ports!r}")
        echo = EchoSpec(
            reader.node(table, "node", "echo", topology, topology.roles.backend if topology.roles else None),
            ports,
        )

    reply_path = None
    table = reader.table(data, "reply_path", "top level")
    if table is not None:
        reply_path = _reply_path(reader, table, topology, default_host, forwarder)

    traffic = []
    for where, item in reader.tables(data, "traffic", "top level"):
        reader.keys(item, _TRAFFIC, where)
        node = reader.node(item, "from", where, topology)
        dst, dport = _address_port(reader, reader.get(item, "to", str, where), f"{where}.to")
        version = ipaddress.ip_address(dst).version
        family = reader.get(item, "family", str, where)
        if family is not None and family != f"ipv{version}":
            raise reader.fail(f"{where}.family", f"{family!r} but `to` {dst!r} is IPv{version}")
        src = reader.get(item, "src", str, where)
        if src is not None:
            try:
                if ipaddress.ip_address(src).version != version:
                    raise reader.fail(f"{where}.src", f"{src!r} is not of the family of `to` {dst!r}")
            except ValueError:
                raise reader.fail(f"{where}.src", f"bad address {src!r}") from None
        payload, size = reader.payload(item, where, MAX_PAYLOAD if version == 4 else MAX_PAYLOAD_IPV6)
        expect_reply = reader.get(item, "expect_reply", bool, where, False)
        if expect_reply and src is not None and src not in topology.addresses_of(node):
            raise reader.fail(
                f"{where}.src", f"{src!r}: a reply can only be awaited from the node's own address"
            )
        traffic.append(
            TrafficSpec(
                node,
                src,
                reader.get(item, "sport", int, where, 4242),
                dst,
                dport,
                payload if payload is not None else pattern_payload(size or 0),
                reader.positive(item, "count", where, 1),
                reader.get(item, "fragment_size", int, where, 0),
                expect_reply,
                reader.get(item, "reply_contains", str, where),
            )
        )

    expect = Expectations()
    table = reader.table(data, "expect", "top level") or {}
    reader.keys(table, _EXPECT, "expect")
    for element, item in reader.tables(table, "arrives", "expect"):
        where = "expect." + element
        reader.keys(item, _ARRIVES, where)
        at = reader.endpoint(reader.get(item, "at", str, where), f"{where}.at", topology)
        payload, size = reader.payload(item, where, MAX_PAYLOAD_IPV6)
        if size is not None:  # the very bytes a traffic item's `size = N` sends: arriving intact
            payload = pattern_payload(size)
        expect.arrives.append(
            ArrivesSpec(
                at,
                reader.get(item, "src", str, where),
                payload,
                size,
                reader.positive(item, "count", where, 1),
                float(reader.positive(item, "within", where, 3.0)),
            )
        )
    expect.nothing_else = reader.get(table, "nothing_else", bool, "expect", True)
    expect.nothing_at = [
        reader.endpoint(text, f"expect.nothing_at[{index}]", topology)
        for index, text in enumerate(reader.strings(table, "nothing_at", "expect", []))
    ]
    expect.status = reader.strings(table, "status", "expect", [])
    expect.exit_code = reader.get(table, "exit_code", int, "expect")
    expect.doctor_names = reader.strings(table, "doctor_names", "expect")

    listened = set([a.at for a in expect.arrives] + expect.nothing_at)
    if echo is not None:
        for endpoint in listened:
            if endpoint.node == echo.node and endpoint.port in echo.ports:
                raise reader.fail("expect", f"{endpoint}: the echo server holds that port; use expect_reply")
    if (expect.status or expect.exit_code is not None) and forwarder is None:
        raise reader.fail("expect", "status and exit_code need a [forwarder]")
    if expect.status and forwarder is not None and "--stats-interval" not in forwarder.args:
        raise reader.fail(
            "expect.status",
            'needs a short report period: add args = ["--stats-interval", "0.2"] to [forwarder]',
        )
    description = reader.get(data, "description", str, "top level", "")
    return Scenario(
        path.stem, str(path), description, topology, forwarder, setup, echo, reply_path, traffic, expect
    )


__all__ = [
    "ArrivesSpec",
    "Endpoint",
    "Expectations",
    "Scenario",
    "TrafficSpec",
    "load_scenario",
    "scenario_from_dict",
]
