"""`netlab doctor`: checks what a transparent forward and its replies need, and names each missing piece
with the exact command or rule that fixes it.

The checks read kernel state only (sysctls, routes, policy rules, the nftables ruleset, process
capabilities and command lines); they change nothing. They run against lab nodes, or against this machine
with `--machine`. What the replies need depends on the forwarder's `--reply` mode, read from its command
line: a source rewrite on the host (direct, the default) or the relay routing (relay), or with
`--reply-tproxy PORT` the tproxy steering of the replies to that one socket; a range destination
(`FIRST-LAST@HOST`) needs its own tproxy steering (netlab.doctor.tproxy).
"""

import ipaddress
from collections.abc import Callable
from typing import Any

from netlab.addresses import parse_endpoint
from netlab.doctor.findings import Deployment, Finding
from netlab.doctor.probes import Probe, Rule, reply_mode_of
from netlab.doctor.tproxy import check_range_steering, check_reply_tproxy, reply_tproxy_port_of
from netlab.errors import AddressError
from netlab.lab.privileges import CAP_NET_ADMIN, CAP_NET_RAW
from netlab.service.launch import range_listeners
from netlab.service.relay import IPPROTO_UDP, RELAY_TABLE, local_route_command, rule_command
from netlab.service.replypath import reply_path_ruleset

IPPROTO_TCP = 6


def reply_mode(deployment: Deployment) -> str:
    """The reply mode to check for: the deployment's, else the forwarder's own (`--reply`), else direct."""
    if deployment.reply_mode is not None:
        return deployment.reply_mode
    modes = {reply_mode_of(argv) for argv in deployment.host.forwarder_command_lines()}
    return "relay" if "relay" in modes else "direct"


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


# Either lets the forwarder set IP_TRANSPARENT; CAP_NET_RAW also opens the raw send path's socket.
_SEND_CAPABILITIES = (1 << CAP_NET_RAW) | (1 << CAP_NET_ADMIN)


def check_capability(deployment: Deployment) -> Finding:
    """The forwarder holds CAP_NET_RAW (or CAP_NET_ADMIN), or held it at start-up and gave every
    capability up once its sockets existed (the raw send path in direct mode needs none after that). A
    process that holds none and whose bounding set lacks both never had them: its unit does not grant them.
    """
    processes = deployment.host.forwarder_capabilities()
    if not processes:
        return Finding(
            "CAP_NET_RAW", True, "no forwarder running to inspect (it checks at start and exits 77)"
        )
    never = [each for each in processes if not (each.effective | each.bounding) & _SEND_CAPABILITIES]
    if never:
        return Finding(
            "CAP_NET_RAW",
            False,
            "the forwarder runs without CAP_NET_RAW and its bounding set lacks it (and CAP_NET_ADMIN), so it "
            "can open neither its raw socket nor use IP_TRANSPARENT",
            "AmbientCapabilities=CAP_NET_RAW and CapabilityBoundingSet=CAP_NET_RAW in its service unit",
        )
    if all(each.effective & _SEND_CAPABILITIES for each in processes):
        return Finding("CAP_NET_RAW", True, "the forwarder holds CAP_NET_RAW or CAP_NET_ADMIN")
    return Finding(
        "CAP_NET_RAW",
        True,
        "the forwarder holds no capability now: it gave them up once its sockets existed, as it does on the "
        "raw send path (it exits 77 at start-up when it cannot get them)",
    )


def check_forwarding(deployment: Deployment) -> list[Finding]:
    findings = []
    families = {_family(address) for address in [deployment.backend_address, *deployment.clients]}
    for version, key in ((4, "net.ipv4.ip_forward"), (6, "net.ipv6.conf.all.forwarding")):
        if version not in families:
            continue
        name = "ip_forward" if version == 4 else "IPv6 forwarding"
        value = deployment.host.read_sysctl(key)
        if value != "1":
            what = (
                "the backend's own traffic is not routed"
                if reply_mode(deployment) == "relay"
                else "backend replies are not routed to clients"
            )
            findings.append(
                Finding(
                    name,
                    False,
                    f"{key}={value} on {deployment.host.name}: {what}",
                    deployment.host.fix(f"sysctl -w {key}=1"),
                )
            )
        else:
            findings.append(Finding(name, True, f"{key}=1 on {deployment.host.name}"))
    return findings


def check_backend_route(deployment: Deployment) -> list[Finding]:
    backend = deployment.backend
    if backend is None:
        return []
    findings = []
    host_route = backend.route_get(deployment.host_address)
    for client in deployment.clients:
        route = backend.route_get(client)
        via_host = route is not None and (
            route["gateway"] is not None or (host_route is not None and route["oif"] == host_route["oif"])
        )
        if route is None or not via_host:
            gateway = deployment.host_backend_address
            prefix = "0.0.0.0/0" if _family(client) == 4 else "::/0"
            findings.append(
                Finding(
                    "backend route to clients",
                    False,
                    f"{backend.name} has no route to client {client} through the host: replies cannot leave",
                    backend.fix(f"ip route add {prefix} via {gateway}"),
                )
            )
        else:
            findings.append(
                Finding("backend route to clients", True, f"{backend.name} reaches {client} via the host")
            )
    return findings


def check_rp_filter(deployment: Deployment) -> list[Finding]:
    findings = []
    for client in deployment.clients:
        route = deployment.host.route_get(client)
        if route is None:
            findings.append(
                Finding(
                    "rp_filter",
                    False,
                    f"{deployment.host.name} has no route back to client {client}: strict reverse-path "
                    "filtering drops its datagrams, and replies cannot reach it",
                    deployment.host.fix(f"ip route add {client} via CLIENT_GATEWAY"),
                )
            )
            continue
        ifname = route.get("ifname")
        values = [deployment.host.read_sysctl(f"net.ipv4.conf.{name}.rp_filter") for name in ("all", ifname)]
        strict = any(value == "1" for value in values)
        findings.append(
            Finding(
                "rp_filter",
                True,
                f"{deployment.host.name} routes {client} back via {ifname}"
                + (" (strict rp_filter passes)" if strict else ""),
            )
        )
    return findings


def _statements(ruleset: list[dict[str, Any]]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    rules = []
    for item in ruleset:
        rule = item.get("rule")
        if rule is not None:
            rules.append((rule, list(rule.get("expr", []))))
    return rules


def check_reply_path(deployment: Deployment) -> list[Finding]:
    if reply_mode(deployment) == "relay":
        if reply_tproxy_port_of(deployment) is not None:
            return check_reply_tproxy(deployment, _backend_port_ranges(deployment))
        return check_relay_routing(deployment)
    ruleset = deployment.host.ruleset()
    rules = _statements(ruleset)
    stateful = [rule for rule, expr in rules if any("masquerade" in e or "snat" in e for e in expr)]
    notrack = [rule for rule, expr in rules if any("notrack" in e for e in expr)]
    rewrite = [
        rule
        for rule, expr in rules
        if any(
            "mangle" in e and e["mangle"].get("key", {}).get("payload", {}).get("field") == "saddr"
            for e in expr
        )
    ]
    recipe = reply_path_ruleset(
        deployment.backend_address, _network_hint(deployment.backend_address), deployment.host_address
    )
    findings = []
    if stateful and not notrack:
        findings.append(
            Finding(
                "conntrack reply trap",
                False,
                "a stateful SNAT/MASQUERADE rule can never rewrite the backend's replies: conntrack files "
                "them under the entry the forwarder's spoofed send created, so the NAT hook never sees them",
                "replace it with notrack plus a stateless source rewrite (nft -f FILE):\n" + recipe,
            )
        )
    elif not (notrack and rewrite):
        findings.append(
            Finding(
                "reply source rewrite",
                False,
                f"nothing rewrites the backend's replies to come from {deployment.host_address}: clients "
                "that check the source (connected sockets) reject them",
                "install notrack plus a stateless source rewrite (nft -f FILE):\n" + recipe,
            )
        )
    else:
        findings.append(
            Finding("reply source rewrite", True, "notrack and a stateless source rewrite are in place")
        )
    return findings


def _backend_ports(deployment: Deployment) -> list[int]:
    """The deployment's backend ports, else the ports of the forwarder's destinations on the backend."""
    if deployment.backend_ports:
        return sorted(set(deployment.backend_ports))
    backend = ipaddress.ip_address(deployment.backend_address)
    ports = set()
    for argv in deployment.host.forwarder_command_lines():
        for arg in argv[1:]:
            try:
                address, port = parse_endpoint(arg.rpartition("=")[2])  # DEST or NAME=DEST
            except AddressError:
                continue
            if ipaddress.ip_address(address) == backend:
                ports.add(port)
    return sorted(ports)


def _backend_port_ranges(deployment: Deployment) -> list[tuple[int, int]]:
    """_backend_ports as ranges, with the backend ports of the forwarder's range destinations on it."""
    ranges = [(port, port) for port in _backend_ports(deployment)]
    if deployment.backend_ports:
        return ranges
    backend = ipaddress.ip_address(deployment.backend_address)
    for launch in deployment.host.forwarder_launches():
        for listener in range_listeners(launch.activator, launch.arguments):
            destination = listener.destination
            try:
                same = ipaddress.ip_address(destination.host) == backend
            except ValueError:
                continue  # a host name: its addresses are not known here
            if same:
                ranges.append((destination.backend_first, destination.backend_last))
    return sorted(set(ranges))


def _covers(rule: Rule, backend: str) -> bool:
    return rule["src"] is not None and ipaddress.ip_address(backend) in rule["src"]


def _relay_table(deployment: Deployment, version: int) -> int:
    """The table the host's relay rules use already (either family), or the recipe's default."""
    for family in (version, 10 - version):
        tables = deployment.host.local_default_tables(family)
        for rule in deployment.host.rules(family):
            if rule["table"] in tables and rule["ip_proto"] == IPPROTO_UDP and rule["sport"]:
                return int(rule["table"])
    return RELAY_TABLE


def _commands(host: Probe, commands: list[str]) -> str:
    return " && ".join(host.fix(command) for command in commands)


def check_relay_routing(deployment: Deployment) -> list[Finding]:
    """--reply relay: the host must route the backend's replies (and nothing else of it) to itself."""
    host, backend = deployment.host, deployment.backend_address
    version = _family(backend)
    loopback = ipaddress.ip_address(backend).is_loopback
    toward = host.route_get(backend)
    iif = None if loopback or toward is None else toward["oif"]
    client = next(iter(deployment.clients), "198.51.100.7" if version == 4 else "2001:db8::7")
    ranges = _backend_port_ranges(deployment)  # a range destination's backend answers from a range
    if not ranges:
        ranges = sorted(
            {
                (r["sport"][0], r["sport"][0])
                for r in host.rules(version)
                if _covers(r, backend) and r["sport"]
            }
        )
    table = _relay_table(deployment, version)

    def relayed(sport: int, proto: int = IPPROTO_UDP) -> bool:
        answer = host.packet_route(backend, client, sport, proto, iif)
        return answer is not None and answer.type == "local"

    # A range is judged by its two ends: a rule covering both covers it (rules match port ranges).
    missing = [(a, b) for a, b in ranges if not (relayed(a) and relayed(b))] if ranges else [(0, 0)]
    if missing:
        twin = version == 6 and any(
            rule["ip_proto"] == IPPROTO_UDP
            and rule["sport"]
            and rule["table"] in host.local_default_tables(4)
            for rule in host.rules(4)
        )
        # With no port known (no forwarder running, no rule for the backend), the fix names a placeholder.
        commands = [rule_command(backend, a, b, table, _spelled(a, b) if a else "PORT") for a, b in missing]
        if table not in host.local_default_tables(version):
            commands.append(local_route_command(version, table))
        shown = ", ".join(_spelled(a, b) for a, b in missing) if ranges else "(the port it answers from)"
        return [
            Finding(
                "relay rule IPv6 twin" if twin else "relay rule",
                False,
                f"{host.name} routes {backend}'s UDP replies from port {shown} on to the client instead of "
                "to the forwarder (--reply relay): its flow sockets never see them"
                + (", though the IPv4 relay rule is there" if twin else ""),
                _commands(host, commands),
            )
        ]
    listed = ", ".join(_spelled(a, b) for a, b in ranges)
    if not loopback:
        other = next(port for port in (53, 123, 40000, 40001) if not any(a <= port <= b for a, b in ranges))
        swallowed = relayed(ranges[0][0], IPPROTO_TCP) or relayed(other)
        if swallowed:
            wide = [
                rule
                for rule in host.rules(version)
                if _covers(rule, backend) and not (rule["ip_proto"] == IPPROTO_UDP and rule["sport"])
            ]
            ip = "ip" if version == 4 else "ip -6"
            commands = [f"{ip} rule del priority {rule['priority']}" for rule in wide]
            commands += [rule_command(backend, a, b, table) for a, b in ranges if wide]
            first, last = ranges[0]
            return [
                Finding(
                    "relay rule scope",
                    False,
                    f"a rule on {host.name} sends all of {backend}'s traffic to itself, not only its UDP "
                    f"replies from port {listed}: the backend's own DNS lookups, updates and TCP never leave",
                    _commands(host, commands)
                    or f"narrow the rule to: {rule_command(backend, first, last, table)}",
                )
            ]
    return [
        Finding(
            "relay rule",
            True,
            f"{host.name} delivers {backend}'s UDP replies from port {listed} to the forwarder and routes "
            "the rest of its traffic",
        )
    ]


def _spelled(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _network_hint(address: str) -> str:
    return str(ipaddress.ip_network(f"{address}/{24 if _family(address) == 4 else 64}", strict=False))


CHECKS: list[Callable[[Deployment], Finding | list[Finding]]] = [
    check_capability,
    check_forwarding,
    check_rp_filter,
    check_backend_route,
    check_range_steering,
    check_reply_path,
]


def diagnose(deployment: Deployment) -> list[Finding]:
    """Run every check; a check that cannot run reports itself as a finding instead of crashing."""
    findings: list[Finding] = []
    for check in CHECKS:
        try:
            result = check(deployment)
        except Exception as error:  # a broken probe must not hide the other checks
            result = Finding(check.__name__.removeprefix("check_"), False, f"could not check: {error}")
        findings.extend(result if isinstance(result, list) else [result])
    return findings


def format_findings(findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(f"[{'ok' if finding.ok else 'MISSING'}] {finding.check}: {finding.detail}")
        if not finding.ok and finding.fix:
            lines.extend(
                f"    fix: {line}" if index == 0 else f"         {line}"
                for index, line in enumerate(finding.fix.splitlines())
            )
    return "\n".join(lines)


__all__ = ["Deployment", "Finding", "diagnose", "format_findings", "reply_mode"]
