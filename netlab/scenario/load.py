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
    [[tproxy]]                             # optional: tproxy steering in a node once the lab is built
    node = "host"                          # default: the topology's host role; the other keys as a
    version = 4                            #   topology's [[nodes.NAME.tproxy]] (netlab.topology.steering)
    to_port = 27000
    dports = "27000-27099"
    [echo]                                 # optional: netlab.programs.echo answering on these ports
    node = "backend"
    ports = [27000]
    [reply_path]                           # optional: how the backend's replies get back
    mode = "direct"                        # default: notrack + a stateless rewrite on the host, with
    backend = "192.0.2.2"                  #   these three; its ports are learned from [forwarder]: a
    backend_network = "192.0.2.0/24"       #   destination port other than the listen port (53 -> 5353)
    host_address = "198.51.100.1"          #   has its replies' source port rewritten back (5353 -> 53)
    # mode = "relay": the forwarder runs with --reply relay, and the host gets the relay routing for
    # backend = "192.0.2.2" and ports = [5353] (default: the [forwarder]'s destinations); with
    # reply_tproxy = 40000 the forwarder's --reply-tproxy 40000, and tproxy steering to that socket instead
    [[traffic]]
    from = "client"
    src = "203.0.113.7"                    # spoofed; default the node's own address
    sport = 4242
    to = "198.51.100.1:27000"
    payload = "hello"                      # or payload_hex = "00ff", or size = 65507
    count = 1
    fragment_size = 0
    family = "ipv4"                        # optional: checked against `to`
    proxy_header = { src = "203.0.113.7:4242", dst = "198.51.100.1:27000" }  # a PROXY v2 header first
                                           # (netlab.scenario.proxyheader; also in expect.arrives)
    expect_reply = false                   # true: a connect()ed socket waits for the reply
    reply_contains = "seen=198.51.100.10:" # optional, with expect_reply
    within = 15                            # with expect_reply: seconds to wait for it (default 15)
    [[expect.arrives]]
    at = "backend:27000"
    src = "203.0.113.7:4242"               # as netlab.traffic.expect: ip:port, [v6]:port, ip, *:port, network
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
from pathlib import Path
from typing import Any

from netlab.addresses import parse_endpoint, parse_port, split_host_port
from netlab.errors import AddressError, FixtureNotFoundError, PacketError, ScenarioError
from netlab.fixtures import (
    TOPOLOGY_TABLES,
    missing_scenario,
    scenario_path,
    topology_names,
    topology_path,
)
from netlab.programs.crafted import MAX_PAYLOAD, MAX_PAYLOAD_IPV6, MIN_FRAGMENT, check_port
from netlab.scenario.model import (
    ArrivesSpec,
    EchoSpec,
    Endpoint,
    Expectations,
    ForwarderSpec,
    ReplyPathSpec,
    Scenario,
    SetupStep,
    TrafficSpec,
)
from netlab.scenario.proxyheader import proxy_header
from netlab.scenario.reader import Reader, address_port
from netlab.service.launch import parse_range_destination, reply_tproxy_port
from netlab.topology.file import load_topology_file, topology_from_dict
from netlab.topology.model import Topology
from netlab.topology.networks import ALLOWED_NETWORKS
from netlab.topology.steering import KEYS as STEERING_KEYS
from netlab.topology.steering import Steering, parse_steering
from netlab.traffic.payload import make_payload

_TOP = {"description", "topology", "forwarder", "setup", "tproxy", "echo", "reply_path", "traffic", "expect"}
_FORWARDER = {"node", "listen", "destinations", "fdnames", "args", "held_sockets"}
_SETUP = {"node", "sysctl", "command", "background", "nft"}
_SETUP_ACTIONS = ("sysctl", "command", "background", "nft")
_ECHO = {"node", "ports"}
_REPLY = {"node", "mode", "backend", "backend_network", "host_address", "ports", "reply_tproxy"}
_REPLY_MODES = ("direct", "relay")
_TRAFFIC = {
    "from", "src", "sport", "to", "payload", "payload_hex", "size", "count", "fragment_size", "family",
    "expect_reply", "reply_contains", "within", "proxy_header",
}  # fmt: skip
_EXPECT = {"arrives", "nothing_else", "nothing_at", "status", "exit_code", "doctor_names"}
_ARRIVES = {"at", "src", "payload", "payload_hex", "size", "count", "within", "proxy_header"}


def load_scenario(file_or_name: str | Path) -> Scenario:
    """Read and validate a scenario file, or the shipped scenario of that name."""
    path = Path(file_or_name)
    if not path.is_file():
        try:
            path = scenario_path(str(file_or_name))
        except FixtureNotFoundError:
            raise missing_scenario(str(file_or_name), file_too=True) from None
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ScenarioError(f"{path}: not valid TOML: {error}") from None
    return scenario_from_dict(data, path, text)


def _topology(reader: Reader, data: Mapping[str, Any], path: Path) -> Topology:
    """`topology`: a shipped name, a file next to the scenario, or an inline [topology] table."""
    expected = (
        f"a shipped name (one of {topology_names()}), a file next to the scenario or a [topology] table"
    )
    if "topology" not in data:
        raise reader.fail("top level", f"missing 'topology': expected {expected}")
    value = data["topology"]
    if isinstance(value, dict):
        return topology_from_dict(value, source=f"{path}: topology")
    if not isinstance(value, str):
        raise reader.fail("topology", f"expected {expected}, got {value!r}")
    if value.endswith(".toml") or "/" in value:
        file = path.parent / value
        if not file.is_file():
            raise reader.fail("topology", f"no topology file {value!r} next to the scenario ({file})")
        return load_topology_file(file)
    try:
        return load_topology_file(topology_path(value))
    except FixtureNotFoundError as error:
        raise FixtureNotFoundError(f"{path}: topology: {error}") from None


def scenario_from_dict(data: Mapping[str, Any], path: Path, text: str = "") -> Scenario:
    """Validate TOML-shaped scenario data read from `path` (whose `text` locates errors by line): one
    reader per table, then the checks that span tables."""
    reader = Reader(str(path), text)
    topology_keys = sorted(TOPOLOGY_TABLES & set(data))
    if topology_keys and "topology" not in data:
        raise reader.fail(
            "top level",
            f"this is a topology file (it has {', '.join(topology_keys)}), not a scenario: "
            "build it with `netlab up FILE`, or name it in a scenario's `topology`",
        )
    reader.keys(data, _TOP, "top level")
    topology = _topology(reader, data, path)
    forwarder = _forwarder(reader, reader.table(data, "forwarder", "top level"), topology)
    setup = [
        _setup_step(reader, where, step, topology)
        for where, step in reader.tables(data, "setup", "top level")
    ]
    for where, table in reader.tables(data, "tproxy", "top level"):
        topology.tproxy(_steering(reader, where, table, topology))
    echo = _echo(reader, reader.table(data, "echo", "top level"), topology)
    reply_path = _reply_path(reader, reader.table(data, "reply_path", "top level"), topology, forwarder)
    if reply_path is not None and reply_path.mode == "direct" and forwarder is not None:
        reply_path.ports = _learned_ports(forwarder, reply_path.backend)
    traffic = [
        _traffic(reader, where, item, topology) for where, item in reader.tables(data, "traffic", "top level")
    ]
    expect = _expect(reader, reader.table(data, "expect", "top level") or {}, topology)
    _check_across_tables(reader, forwarder, expect)
    description = reader.get(data, "description", str, "top level", "")
    return Scenario(
        path.stem, str(path), description, topology, forwarder, setup, echo, reply_path, traffic, expect
    )


def _default_host(topology: Topology) -> str:
    return (topology.roles.host if topology.roles else None) or "host"


def _forwarder(reader: Reader, table: dict[str, Any] | None, topology: Topology) -> ForwarderSpec | None:
    """[forwarder]: the sockets systemd would pass, the destinations and the options."""
    if table is None:
        return None
    reader.keys(table, _FORWARDER, "forwarder")
    listen = reader.strings(table, "listen", "forwarder", [])
    for index, text in enumerate(listen):
        where = f"forwarder.listen[{index}]"
        lab_address(reader, address_port(reader, text, where)[0], where)
    destinations = reader.strings(table, "destinations", "forwarder", [])
    for index, text in enumerate(destinations):
        ranged = parse_range_destination(text)  # FIRST-LAST@HOST[:PORT]: a port range on one socket
        try:
            address = ranged.host if ranged else parse_endpoint(text.rpartition("=")[2])[0]
            ipaddress.ip_address(address)
        except (AddressError, ValueError):
            continue  # a host name, or a form the forwarder itself judges
        lab_address(reader, address, f"forwarder.destinations[{index}]")
    if not listen or not destinations:
        raise reader.fail("forwarder", "needs listen = [ADDR:PORT, ...] and destinations = [DEST, ...]")
    fdnames = reader.strings(table, "fdnames", "forwarder")
    if fdnames is not None and len(fdnames) != len(listen):
        raise reader.fail("forwarder.fdnames", f"{fdnames!r}: expected one name per listen socket")
    return ForwarderSpec(
        reader.node(table, "node", "forwarder", topology, _default_host(topology)),
        listen,
        destinations,
        fdnames,
        reader.strings(table, "args", "forwarder", []),
        reader.get(table, "held_sockets", bool, "forwarder", False),
    )


def _setup_step(reader: Reader, where: str, step: dict[str, Any], topology: Topology) -> SetupStep:
    """One [[setup]] table: a node and exactly one action."""
    reader.keys(step, _SETUP, where)
    actions = [key for key in _SETUP_ACTIONS if key in step]
    if len(actions) != 1:
        raise reader.fail(where, f"expected exactly one of {list(_SETUP_ACTIONS)}, got {actions}")
    action = actions[0]
    kind: type = {"sysctl": dict, "nft": str}.get(action, list)
    value = reader.get(step, action, kind, where)
    return SetupStep(reader.node(step, "node", where, topology), action, value)


def _steering(reader: Reader, where: str, table: dict[str, Any], topology: Topology) -> Steering:
    """One [[tproxy]] table: the node (the host role by default) and a topology's tproxy keys."""
    reader.keys(table, {"node", *STEERING_KEYS}, where)
    node = reader.node(table, "node", where, topology, _default_host(topology))
    steering = parse_steering({k: v for k, v in table.items() if k != "node"}, node, reader.fail, where)
    interfaces = topology.interfaces_of(node)
    if steering.iifname is not None and steering.iifname not in interfaces:
        raise reader.fail(
            f"{where}.iifname",
            f"{steering.iifname!r} is not an interface of node {node!r} (its interfaces: {interfaces})",
        )
    return steering


def _echo(reader: Reader, table: dict[str, Any] | None, topology: Topology) -> EchoSpec | None:
    """[echo]: the echo server's node (the backend role by default) and ports."""
    if table is None:
        return None
    reader.keys(table, _ECHO, "echo")
    ports = reader.get(table, "ports", list, "echo", [])
    if not ports or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
        raise reader.fail("echo.ports", f"expected a list of UDP ports, got {ports!r}")
    backend = topology.roles.backend if topology.roles else None
    return EchoSpec(reader.node(table, "node", "echo", topology, backend), ports)


def _reply_path(
    reader: Reader, table: dict[str, Any] | None, topology: Topology, forwarder: ForwarderSpec | None
) -> ReplyPathSpec | None:
    """[reply_path]: the host's rewrite of the backend's replies (direct), or the relay routing (relay)."""
    if table is None:
        return None
    reader.keys(table, _REPLY, "reply_path")
    mode = reader.get(table, "mode", str, "reply_path", "direct")
    if mode not in _REPLY_MODES:
        raise reader.fail("reply_path.mode", f"{mode!r}: expected one of {list(_REPLY_MODES)}")
    node = reader.node(table, "node", "reply_path", topology, _default_host(topology))
    if mode == "relay":
        return _relay(reader, table, node, forwarder)
    for key in ("ports", "reply_tproxy"):
        if key in table:
            raise reader.fail(
                f"reply_path.{key}", 'goes with mode = "relay" (direct mode rewrites every port)'
            )
    values = {
        key: reader.get(table, key, str, "reply_path")
        for key in ("backend", "backend_network", "host_address")
    }
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise reader.fail("reply_path", f"missing {missing}")
    return ReplyPathSpec(node, **values)


def _relay(
    reader: Reader, table: dict[str, Any], node: str, forwarder: ForwarderSpec | None
) -> ReplyPathSpec:
    """[reply_path] mode = "relay": the backend addresses and ports that get the relay routing (given, or
    the [forwarder]'s destinations), and --reply relay for the forwarder."""
    for key in ("backend_network", "host_address"):
        if key in table:
            raise reader.fail(f"reply_path.{key}", 'goes with mode = "direct" (relay mode rewrites nothing)')
    backend = reader.get(table, "backend", str, "reply_path")
    if backend is not None:
        try:
            ipaddress.ip_address(backend)
        except ValueError:
            raise reader.fail("reply_path.backend", f"bad address {backend!r}") from None
        lab_address(reader, backend, "reply_path.backend")
    ports = reader.get(table, "ports", list, "reply_path")
    if ports == []:
        raise reader.fail("reply_path.ports", "[]: expected at least one port the backend answers from")
    for port in ports or []:
        try:
            check_port(port, "port")
        except PacketError as error:
            raise reader.fail("reply_path.ports", str(error)) from None
    reply_tproxy = reader.get(table, "reply_tproxy", int, "reply_path")
    if reply_tproxy is not None:
        try:
            parse_port(reply_tproxy, "reply_tproxy")
        except AddressError as error:
            raise reader.fail("reply_path.reply_tproxy", str(error)) from None
    if forwarder is not None:
        _reply_relay_option(reader, forwarder)
        if reply_tproxy is not None:
            _reply_tproxy_option(reader, forwarder, reply_tproxy)
    if ports is not None and backend is None:
        raise reader.fail("reply_path.ports", "needs backend = ADDRESS (the address the replies come from)")
    relay = {backend: list(ports)} if backend is not None and ports else _destinations(forwarder, backend)
    if not relay:
        raise reader.fail(
            "reply_path",
            'mode = "relay" needs backend and ports, or a [forwarder] with ADDRESS:PORT destinations'
            + (f" on {backend!r}" if backend else ""),
        )
    return ReplyPathSpec(node, ", ".join(relay), "", "", "relay", relay, reply_tproxy=reply_tproxy)


def _destinations(forwarder: ForwarderSpec | None, backend: str | None) -> dict[str, list[int]]:
    """The [forwarder]'s destinations (DEST or NAME=DEST) by address, only `backend`'s when given."""
    relay: dict[str, list[int]] = {}
    for text in forwarder.destinations if forwarder else []:
        try:
            address, port = parse_endpoint(text.rpartition("=")[2])
        except AddressError:
            continue  # a host name: its addresses are not known here
        if backend is None or ipaddress.ip_address(address) == ipaddress.ip_address(backend):
            relay.setdefault(address, []).append(port)
    return relay


def _reply_relay_option(reader: Reader, forwarder: ForwarderSpec) -> None:
    """Give the forwarder --reply relay, unless its args say so already; refuse args that say otherwise."""
    args = forwarder.args
    given = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--reply"]
    given += [arg.removeprefix("--reply=") for arg in args if arg.startswith("--reply=")]
    if not given:
        forwarder.args = [*args, "--reply", "relay"]
    elif given != ["relay"]:
        raise reader.fail("forwarder.args", f'{args!r} contradict [reply_path] mode = "relay"')


def _reply_tproxy_option(reader: Reader, forwarder: ForwarderSpec, port: int) -> None:
    """Give the forwarder --reply-tproxy PORT, unless its args say so already; refuse another port."""
    given = reply_tproxy_port(forwarder.args)
    if given is None:
        forwarder.args = [*forwarder.args, "--reply-tproxy", str(port)]
    elif given != port:
        raise reader.fail(
            "forwarder.args", f"{forwarder.args!r} contradict [reply_path] reply_tproxy = {port}"
        )


def _learned_ports(forwarder: ForwarderSpec, backend: str) -> dict[int, int]:
    """Backend port -> host port for each of the forwarder's sockets whose destination is `backend` on a
    port other than the socket's own: the ports the reply path must rewrite back."""
    names = dict(zip(forwarder.fdnames or [], forwarder.listen, strict=False))
    ports: dict[int, int] = {}
    for index, destination in enumerate(forwarder.destinations):
        name, equals, dest = destination.partition("=")
        if not equals:
            dest, listen = destination, forwarder.listen[index] if index < len(forwarder.listen) else None
        else:
            listen = names.get(name)
        if listen is None:
            continue
        host, port = split_host_port(dest)  # a bare IPv6 literal has no port: ("2001:db8::2", "")
        try:
            same = ipaddress.ip_address(host) == ipaddress.ip_address(backend)
        except ValueError:
            continue  # a host name: the forwarder resolves it; the reply path names addresses
        listen_port = parse_endpoint(listen)[1]
        if same and port.isdigit() and int(port) != listen_port:
            ports[int(port)] = listen_port
    return ports


def _traffic(reader: Reader, where: str, item: dict[str, Any], topology: Topology) -> TrafficSpec:
    """One [[traffic]] table: a datagram (or `count` of them) crafted from a node."""
    reader.keys(item, _TRAFFIC, where)
    node = reader.node(item, "from", where, topology)
    dst, dport = address_port(reader, reader.get(item, "to", str, where), f"{where}.to")
    lab_address(reader, dst, f"{where}.to")
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
        lab_address(reader, src, f"{where}.src")
    payload, size = reader.payload(item, where, MAX_PAYLOAD if version == 4 else MAX_PAYLOAD_IPV6)
    expect_reply = reader.get(item, "expect_reply", bool, where, False)
    if expect_reply and src is not None and src not in topology.addresses_of(node):
        raise reader.fail(f"{where}.src", f"{src!r}: a reply can only be awaited from the node's own address")
    sport = reader.get(item, "sport", int, where, 4242)
    try:
        check_port(sport, "sport")
    except PacketError as error:
        raise reader.fail(f"{where}.sport", str(error)) from None
    fragment_size = reader.get(item, "fragment_size", int, where, 0)
    least = MIN_FRAGMENT[version]
    if fragment_size != 0 and not least <= fragment_size <= 65535:
        raise reader.fail(
            f"{where}.fragment_size",
            f"{fragment_size!r}: expected 0 (only above the MTU) or {least} to 65535 for IPv{version}",
        )
    return TrafficSpec(
        node,
        src,
        sport,
        dst,
        dport,
        _with_header(reader, item, where, payload if payload is not None else make_payload(size or 0)),
        reader.positive(item, "count", where, 1),
        fragment_size,
        expect_reply,
        reader.get(item, "reply_contains", str, where),
        _reply_within(reader, where, item, expect_reply),
    )


def _reply_within(reader: Reader, where: str, item: dict[str, Any], expect_reply: bool) -> float:
    """`within` of a traffic item: how long to wait for its reply; only with expect_reply."""
    if "within" in item and not expect_reply:
        raise reader.fail(f"{where}.within", "waits for a reply: give it together with expect_reply = true")
    return float(reader.positive(item, "within", where, 15.0))


def _arrives(reader: Reader, where: str, item: dict[str, Any], topology: Topology) -> ArrivesSpec:
    """One [[expect.arrives]] table: a datagram (or `count`) at NODE:PORT within a deadline."""
    reader.keys(item, _ARRIVES, where)
    at = reader.endpoint(reader.get(item, "at", str, where), f"{where}.at", topology)
    payload, size = reader.payload(item, where, MAX_PAYLOAD_IPV6)
    if size is not None:  # the very bytes a traffic item's `size = N` sends: arriving intact
        payload = make_payload(size)
    if "proxy_header" in item:
        payload = _with_header(reader, item, where, payload or b"")
    return ArrivesSpec(
        at,
        reader.get(item, "src", str, where),
        payload,
        size,
        reader.positive(item, "count", where, 1),
        float(reader.positive(item, "within", where, 3.0)),
    )


def _with_header(reader: Reader, item: dict[str, Any], where: str, payload: bytes) -> bytes:
    """`payload` after the PROXY v2 header of the item's `proxy_header` table, if it has one."""
    table = reader.table(item, "proxy_header", where)
    return payload if table is None else proxy_header(reader, table, where) + payload


def _expect(reader: Reader, table: dict[str, Any], topology: Topology) -> Expectations:
    """[expect] and its [[expect.arrives]] tables."""
    reader.keys(table, _EXPECT, "expect")
    return Expectations(
        arrives=[
            _arrives(reader, "expect." + element, item, topology)
            for element, item in reader.tables(table, "arrives", "expect")
        ],
        nothing_else=reader.get(table, "nothing_else", bool, "expect", True),
        nothing_at=[
            reader.endpoint(text, f"expect.nothing_at[{index}]", topology)
            for index, text in enumerate(reader.strings(table, "nothing_at", "expect", []))
        ],
        status=reader.strings(table, "status", "expect", []),
        exit_code=reader.get(table, "exit_code", int, "expect"),
        doctor_names=reader.strings(table, "doctor_names", "expect"),
    )


def lab_address(reader: Reader, address: str, element: str) -> None:
    """Refuse an address outside the documentation ranges a lab may use (as topologies do): a scenario
    must never send to, or forward to, an address of the outside world. The unspecified and loopback
    addresses stay inside the node."""
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    if parsed.is_unspecified or parsed.is_loopback or any(parsed in net for net in ALLOWED_NETWORKS):
        return
    ranges = ", ".join(map(str, ALLOWED_NETWORKS))
    raise reader.fail(element, f"address {address!r} is outside the lab's address ranges {ranges}")


def _check_across_tables(reader: Reader, forwarder: ForwarderSpec | None, expect: Expectations) -> None:
    """What one table alone cannot judge: a scenario without a forwarder only checks the doctor, and
    expectations that need a forwarder."""
    if forwarder is None and expect.doctor_names is None:
        raise reader.fail(
            "top level",
            "missing [forwarder] (listen = [...], destinations = [...]): without one, a scenario only "
            "checks what `netlab doctor` names ([expect] doctor_names)",
        )
    if (expect.status or expect.exit_code is not None) and forwarder is None:
        raise reader.fail("expect", "status and exit_code need a [forwarder]")
    if expect.status and forwarder is not None and "--stats-interval" not in forwarder.args:
        raise reader.fail(
            "expect.status",
            'needs a short report period: add args = ["--stats-interval", "0.2"] to [forwarder]',
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
