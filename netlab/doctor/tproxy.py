"""The doctor's tproxy checks: a forwarder serving a port range on one socket (`FIRST-LAST@HOST` on its
command line) or reading every relayed reply from one socket (`--reply-tproxy PORT`) depends on three
pieces of the host, each named here with the command that adds it when missing:

- an nft rule in a prerouting chain that steers the datagrams (each port of the range, or the backend's
  replies from each port it answers from) with `tproxy to :PORT`, read from `nft -j list ruleset`;
- a policy rule for the mark that rule sets (`ip rule add fwmark M lookup T`), and
- a `local` default route on lo in that table, so the marked datagram is delivered instead of forwarded.
The last two are judged by asking the kernel how it routes such a datagram carrying the mark (RTM_GETROUTE
with RTA_MARK): a range on an address the host owns is delivered without them, which the kernel's answer
says too. Each address family is checked on its own (the IPv6 pieces are named `... IPv6`).
"""

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from netlab.doctor.findings import Deployment, Finding
from netlab.errors import AddressError
from netlab.lab.tproxy import tproxy_commands
from netlab.service.launch import range_listeners, reply_tproxy_port
from netlab.service.relay import IPPROTO_UDP, local_route_command

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]
DEFAULT_MARK, DEFAULT_TABLE = 1, 100
# The README recipes' table names (`tproxy` itself, tproxy_commands' default, is an nft keyword that `nft
# add table ip tproxy` refuses as a syntax error).
RANGE_TABLE = "transparent_udp_forwarder_range"
REPLIES_TABLE = "transparent_udp_forwarder_replies"
_VERSIONS = {"ip": 4, "ip6": 6}
_SAMPLE_CLIENT = {4: "198.51.100.7", 6: "2001:db8::7"}


@dataclass(frozen=True)
class TproxyRule:
    """A `tproxy` rule of a prerouting chain as the doctor reads it (None: the rule does not match on it)."""

    version: int
    port: int | None
    mark: int | None
    daddr: tuple[Network, ...] | None
    saddr: tuple[Network, ...] | None
    dports: tuple[PortRange, ...] | None
    sports: tuple[PortRange, ...] | None


def _networks(value: Any) -> tuple[Network, ...] | None:
    items = value["set"] if isinstance(value, dict) and "set" in value else [value]
    found = []
    for item in items:
        if isinstance(item, str):
            found.append(ipaddress.ip_network(item, strict=False))
        elif isinstance(item, dict) and "prefix" in item:
            prefix = item["prefix"]
            found.append(ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}", strict=False))
        else:
            return None  # a range of addresses, a named set: not judged
    return tuple(found)


def _ports(value: Any) -> tuple[PortRange, ...] | None:
    items = value["set"] if isinstance(value, dict) and "set" in value else [value]
    found = []
    for item in items:
        if isinstance(item, int):
            found.append((item, item))
        elif isinstance(item, dict) and "range" in item:
            first, last = item["range"]
            found.append((int(first), int(last)))
        else:
            return None
    return tuple(found)


def _rule(family: str, expressions: list[dict[str, Any]]) -> TproxyRule | None:
    """The TproxyRule of one rule's expressions, or None when it does no tproxy or matches in ways the
    doctor does not judge (a negation, a named set)."""
    statement = next((e["tproxy"] for e in expressions if "tproxy" in e), None)
    if statement is None:
        return None
    version = _VERSIONS.get(statement.get("family", family))
    fields: dict[str, Any] = {"daddr": None, "saddr": None, "dport": None, "sport": None}
    mark = None
    for expression in expressions:
        if "mangle" in expression and expression["mangle"].get("key") == {"meta": {"key": "mark"}}:
            value = expression["mangle"].get("value")
            mark = value if isinstance(value, int) else None
        match = expression.get("match")
        if not match:
            continue
        payload = match.get("left", {}).get("payload", {}) if isinstance(match.get("left"), dict) else {}
        field, protocol = payload.get("field"), payload.get("protocol")
        if field not in fields:
            continue
        if match.get("op") not in ("==", "in"):
            return None
        if field in ("daddr", "saddr"):
            version = version or _VERSIONS.get(str(protocol))
            fields[field] = _networks(match["right"])
        else:
            fields[field] = _ports(match["right"])
        if fields[field] is None:
            return None
    if version is None:
        return None
    port = statement.get("port")
    return TproxyRule(
        version,
        port if isinstance(port, int) else None,
        mark,
        fields["daddr"],
        fields["saddr"],
        fields["dport"],
        fields["sport"],
    )


def tproxy_rules(ruleset: Iterable[dict[str, Any]]) -> list[TproxyRule]:
    """Every tproxy rule in a base chain on the prerouting hook of an `nft -j list ruleset`."""
    items = list(ruleset)
    prerouting = {
        (chain["family"], chain["table"], chain["name"])
        for chain in (item["chain"] for item in items if "chain" in item)
        if chain.get("hook") == "prerouting"
    }
    found = []
    for item in items:
        rule = item.get("rule")
        if rule is None or (rule["family"], rule["table"], rule["chain"]) not in prerouting:
            continue
        parsed = _rule(rule["family"], list(rule.get("expr", [])))
        if parsed is not None:
            found.append(parsed)
    return found


def uncovered(wanted: PortRange, covering: Iterable[PortRange]) -> list[PortRange]:
    """The parts of `wanted` (first, last) that no range of `covering` includes, in order."""
    missing = [wanted]
    for low, high in covering:
        rest = []
        for first, last in missing:
            if high < first or low > last:
                rest.append((first, last))
                continue
            if first < low:
                rest.append((first, low - 1))
            if last > high:
                rest.append((high + 1, last))
        missing = rest
    return missing


def _spelled(ranges: Sequence[PortRange]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _name(prefix: str, piece: str, version: int) -> str:
    return f"{prefix} {piece}" + (" IPv6" if version == 6 else "")


def _contains(networks: tuple[Network, ...] | None, address: str) -> bool:
    return networks is None or any(ipaddress.ip_address(address) in network for network in networks)


def _local_tables(deployment: Deployment, version: int) -> set[int]:
    return set(deployment.host.local_default_tables(version))


def _suggested_mark(deployment: Deployment, version: int) -> tuple[int, int]:
    """A (mark, table) the host already delivers locally, else the recipe's (1, 100)."""
    tables = _local_tables(deployment, version)
    for rule in deployment.host.rules(version):
        if rule.get("fwmark") and rule["table"] in tables:
            return int(rule["fwmark"]), int(rule["table"])
    return DEFAULT_MARK, min(tables) if tables else DEFAULT_TABLE


@dataclass(frozen=True)
class _Probe:
    """How to ask the kernel about one steered datagram: from `src` to `dst`, arriving on `iif`."""

    src: str
    dst: str
    sport: int
    iif: int | None
    what: str  # "datagrams to 198.51.100.1", for the messages


def _mark_routing(
    deployment: Deployment, prefix: str, version: int, marks: set[int | None], probe: _Probe
) -> list[Finding]:
    """The mark rule and the local route for each mark (None: a tproxy rule that sets none): ok when the
    kernel delivers the datagram carrying it."""

    host = deployment.host
    findings = []
    for mark in sorted(marks, key=lambda value: -1 if value is None else value):
        answer = host.packet_route(probe.src, probe.dst, probe.sport, IPPROTO_UDP, probe.iif, mark=mark)
        if answer is not None and answer.type == "local":
            how = "unmarked" if mark is None else f"marked {mark:#x}"
            findings.append(
                Finding(
                    _name(prefix, "mark routing", version),
                    True,
                    f"{host.name} delivers {probe.what} {how} to its own sockets",
                )
            )
            continue
        if mark is None:
            suggested = _suggested_mark(deployment, version)[0]
            findings.append(
                Finding(
                    _name(prefix, "mark rule", version),
                    False,
                    f"the tproxy rule on {host.name} for {probe.what} sets no mark, so no policy rule can "
                    "deliver them: they are routed on instead of reaching the forwarder's socket",
                    f"add `meta mark set {suggested:#x}` before `tproxy to` in that rule",
                )
            )
            continue
        ip = "ip" if version == 4 else "ip -6"
        tables = _local_tables(deployment, version)
        mask = 0xFFFFFFFF
        rules = [
            rule
            for rule in host.rules(version)
            if rule.get("fwmark") is not None and mark & (rule.get("fwmask") or mask) == rule["fwmark"]
        ]
        if not rules:
            table = min(tables) if tables else DEFAULT_TABLE
            findings.append(
                Finding(
                    _name(prefix, "mark rule", version),
                    False,
                    f"no policy rule on {host.name} matches the mark {mark:#x} the tproxy rule sets: "
                    f"{probe.what} are routed on instead of reaching the forwarder's socket",
                    host.fix(f"{ip} rule add fwmark {mark:#x} lookup {table}"),
                )
            )
            if table not in tables:
                findings.append(_route_finding(deployment, prefix, version, mark, table, probe))
        elif not any(rule["table"] in tables for rule in rules):
            findings.append(_route_finding(deployment, prefix, version, mark, int(rules[0]["table"]), probe))
        else:
            # Some rule of a lower priority number decides first (a catch-all lookup, another mark's):
            # the mark's rule must come ahead of every rule but the local table's (priority 0).
            good = next(rule for rule in rules if rule["table"] in tables)
            ahead = max(
                1, min((int(r["priority"]) for r in host.rules(version) if r["priority"]), default=2) - 1
            )
            findings.append(
                Finding(
                    _name(prefix, "mark rule", version),
                    False,
                    f"{host.name} has a rule for the mark {mark:#x} (priority {good['priority']}) and a "
                    f"local route in its table, yet a rule ahead of it routes {probe.what} carrying it on",
                    host.fix(f"{ip} rule add priority {ahead} fwmark {mark:#x} lookup {good['table']}"),
                )
            )
    return findings


def _route_finding(  # noqa: PLR0913, PLR0917 - the fields of one finding
    deployment: Deployment, prefix: str, version: int, mark: int, table: int, probe: _Probe
) -> Finding:

    return Finding(
        _name(prefix, "local route", version),
        False,
        f"table {table} (the mark {mark:#x}'s) on {deployment.host.name} has no local default route on lo: "
        f"{probe.what} are routed on instead of reaching the forwarder's socket",
        deployment.host.fix(local_route_command(version, table)),
    )


def _nft_fix(deployment: Deployment, version: int, to_port: int, **selectors: Any) -> str:
    """The nft commands of the recipe for this steering (the mark routing is judged on its own)."""
    mark, table = _suggested_mark(deployment, version)
    nft_table = RANGE_TABLE if "dports" in selectors else REPLIES_TABLE
    commands = tproxy_commands(version, to_port, mark=mark, table=table, nft_table=nft_table, **selectors)
    return " && ".join(deployment.host.fix(command) for command in commands if command.startswith("nft "))


def _client(deployment: Deployment, version: int) -> str:
    return next(
        (c for c in deployment.clients if ipaddress.ip_address(c).version == version), _SAMPLE_CLIENT[version]
    )


def _interface_toward(deployment: Deployment, address: str) -> int | None:
    route = deployment.host.route_get(address)
    return None if route is None else route.get("oif")


def check_range_steering(deployment: Deployment) -> list[Finding]:
    """Each range destination of the forwarder: every port of the range steered to its socket, and the
    marked datagrams delivered locally; for the deployment's address family."""

    version = ipaddress.ip_address(deployment.backend_address).version
    host = deployment.host
    launches = host.forwarder_launches()
    listeners = [item for launch in launches for item in range_listeners(launch.activator, launch.arguments)]
    findings: list[Finding] = []
    if not listeners:
        return findings
    rules = [rule for rule in tproxy_rules(host.ruleset()) if rule.version == version and rule.sports is None]
    client = _client(deployment, version)
    for listener in listeners:
        destination, sock = listener.destination, listener.socket
        if sock is not None and version not in sock.versions:
            continue
        specific = sock is not None and not ipaddress.ip_address(sock.address).is_unspecified
        address = sock.address if sock is not None and specific else None
        port = sock.port if sock is not None else None
        steering = [
            rule
            for rule in rules
            if (port is None or rule.port == port) and (address is None or _contains(rule.daddr, address))
        ]
        covering = [r for rule in steering for r in (rule.dports or [(1, 65535)])]
        missing = uncovered(destination.ports, covering)
        to = f":{port}" if port is not None else "the forwarder's socket"
        ranges = _spelled([destination.ports])
        if missing:
            findings.append(
                Finding(
                    _name("range", "tproxy rule", version),
                    False,
                    f"no nft tproxy rule on {host.name} steers IPv{version} datagrams to ports "
                    f"{_spelled(missing)} (of {destination.text}) to {to}: they never reach the "
                    "forwarder's socket",
                    _nft_fix(deployment, version, port or destination.first, dports=missing, daddr=address),
                )
            )
        else:
            findings.append(
                Finding(
                    _name("range", "tproxy rule", version),
                    True,
                    f"{host.name} steers ports {ranges} to {to}",
                )
            )
        serving = [
            rule
            for rule in steering
            if rule.dports is None
            or any(a <= destination.last and b >= destination.first for a, b in rule.dports)
        ]
        marks = {rule.mark for rule in serving} or {_suggested_mark(deployment, version)[0]}
        destination_address = address or _daddr(steering) or deployment.host_address
        if ipaddress.ip_address(destination_address).version != version:
            continue
        probe = _Probe(
            client,
            destination_address,
            40000,
            _interface_toward(deployment, client) if deployment.clients else None,
            f"datagrams to {destination_address} ports {ranges}",
        )
        findings += _mark_routing(deployment, "range", version, marks, probe)
    return findings


def _daddr(rules: Sequence[TproxyRule]) -> str | None:
    """One destination address the steering rules name (the first), None when they name none."""
    for rule in rules:
        for network in rule.daddr or ():
            return str(network.network_address if network.num_addresses == 1 else next(network.hosts()))
    return None


def reply_tproxy_port_of(deployment: Deployment) -> int | None:
    """The forwarder's `--reply-tproxy PORT`, None when no forwarder asks for it."""
    ports = [reply_tproxy_port(launch.arguments) for launch in deployment.host.forwarder_launches()]
    return min((port for port in ports if port is not None), default=None)


def check_reply_tproxy(deployment: Deployment, backend_ports: Sequence[PortRange]) -> list[Finding]:
    """--reply-tproxy PORT: the backend's replies from each of its ports steered to PORT, and delivered."""

    port = reply_tproxy_port_of(deployment)
    if port is None:
        return []
    host, backend = deployment.host, deployment.backend_address
    try:
        version = ipaddress.ip_address(backend).version
    except ValueError:
        raise AddressError(f"backend {backend!r}: expected an address") from None
    rules = [
        rule
        for rule in tproxy_rules(host.ruleset())
        if rule.version == version and rule.port == port and _contains(rule.saddr, backend)
    ]
    covering = [r for rule in rules for r in (rule.sports or [(1, 65535)])]
    wanted = list(backend_ports)
    # Without a known port (no destination on this backend), any rule for the backend will do.
    missing = (
        [gap for ports in wanted for gap in uncovered(ports, covering)]
        if wanted
        else []
        if rules
        else [(0, 0)]
    )
    findings: list[Finding] = []
    shown = _spelled(wanted) if wanted else "(the ports it answers from)"
    if missing:
        fix = _nft_fix(deployment, version, port, saddr=backend, sports=missing if wanted else 53)
        findings.append(
            Finding(
                _name("reply", "tproxy rule", version),
                False,
                f"no nft tproxy rule on {host.name} steers {backend}'s UDP replies from port "
                f"{_spelled(missing) if wanted else shown} to the forwarder's reply socket :{port} "
                "(--reply-tproxy): they are routed on to the client",
                fix if wanted else fix.replace("udp sport 53", "udp sport PORT"),
            )
        )
    else:
        findings.append(
            Finding(
                _name("reply", "tproxy rule", version),
                True,
                f"{host.name} steers {backend}'s UDP replies from port {shown} to :{port}",
            )
        )
    marks = {rule.mark for rule in rules} or {_suggested_mark(deployment, version)[0]}
    client = _client(deployment, version)
    loopback = ipaddress.ip_address(backend).is_loopback
    probe = _Probe(
        backend,
        client,
        wanted[0][0] if wanted else 53,
        None if loopback else _interface_toward(deployment, backend),
        f"{backend}'s replies to clients",
    )
    return findings + _mark_routing(deployment, "reply", version, marks, probe)


__all__ = ["TproxyRule", "check_range_steering", "check_reply_tproxy", "tproxy_rules", "uncovered"]
