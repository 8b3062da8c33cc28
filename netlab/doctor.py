"""`netlab doctor`: checks what a transparent forward and its replies need, and names each missing piece
with the exact command or rule that fixes it.

The checks read kernel state only (sysctls, routes, the nftables ruleset, process capabilities); they
change nothing. They run against lab nodes, or against this machine with `--machine`.
"""

import ipaddress
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyroute2 import IPRoute

from netlab.privileges import CAP_NET_ADMIN
from netlab.replypath import reply_path_ruleset


class Probe(Protocol):
    """Where checks look: a lab node, or this machine's own network namespace."""

    name: str

    def read_sysctl(self, key: str) -> str | None: ...
    def route_get(self, destination: str) -> dict[str, Any] | None: ...
    def ruleset(self) -> list[dict[str, Any]]: ...
    def forwarder_capabilities(self) -> list[int]: ...
    def fix(self, command: str) -> str: ...


@dataclass
class Finding:
    """One check's result: `ok`, or what is missing and the command or rule that fixes it."""

    check: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Deployment:
    """What the doctor checks: the host running the forwarder, its backend, and client addresses."""

    host: Probe
    backend: Probe | None
    backend_address: str
    host_address: str  # the address clients send to, which replies must come from
    clients: Sequence[str] = field(default_factory=list)
    host_backend_address: str = "HOST_ADDRESS_ON_BACKEND_NETWORK"  # the backend's gateway, for fix hints
    reply: str | None = None  # "direct" or "relay"; None: as the running forwarder says (netlab.doctor_relay)
    backend_ports: list[int] = field(default_factory=list)  # relay: the ports the backend answers from


def _netns_ipr(namespace: str | None) -> IPRoute:
    return IPRoute(netns=namespace) if namespace else IPRoute()


def route_via(namespace: str | None, destination: str) -> dict[str, Any] | None:
    """The kernel's route for `destination` in `namespace` (None for this one): oif, gateway, ifname."""
    with _netns_ipr(namespace) as ipr:
        try:
            answer = ipr.route("get", dst=destination)
        except Exception:  # pyroute2 raises NetlinkError for "no route"
            return None
        if not answer:
            return None
        oif = answer[0].get("RTA_OIF")
        ifname = None
        if oif is not None:
            links = ipr.link("get", index=oif)
            ifname = links[0].get("IFLA_IFNAME") if links else None
        return {"oif": oif, "gateway": answer[0].get("RTA_GATEWAY"), "ifname": ifname}


def is_forwarder(argv: list[bytes]) -> bool:
    """True for `systemd-transparent-udp-forwarderd ...` and `python -m forwarder ...` command lines."""
    if argv and os.path.basename(argv[0]) == b"systemd-transparent-udp-forwarderd":
        return True
    return (
        len(argv) >= 3
        and os.path.basename(argv[0]).startswith(b"python")
        and argv[1:3] == [b"-m", b"forwarder"]
    )


def forwarder_pids(namespace_inode: tuple[int, int] | None) -> list[int]:
    """Pids of forwarder processes, in the namespace with that (dev, inode), or anywhere if None."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if not is_forwarder(handle.read().split(b"\0")):
                    continue
            if namespace_inode is not None:
                status = os.stat(f"/proc/{entry}/ns/net")
                if (status.st_dev, status.st_ino) != namespace_inode:
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def capabilities_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


class NamespaceProbe:
    """Checks inside a lab node (a named network namespace)."""

    def __init__(self, name: str, namespace: str) -> None:
        self.name = name
        self.namespace = namespace

    def read_sysctl(self, key: str) -> str | None:
        from netlab import netns

        try:
            return netns.read_sysctl(self.namespace, key)
        except FileNotFoundError:
            return None

    def route_get(self, destination: str) -> dict[str, Any] | None:
        return route_via(self.namespace, destination)

    def ruleset(self) -> list[dict[str, Any]]:
        from netlab import netns

        return netns.run_in(self.namespace, _list_ruleset)

    def forwarder_capabilities(self) -> list[int]:
        from netlab import netns

        return [capabilities_of(pid) for pid in forwarder_pids(netns.inode(self.namespace))]

    def fix(self, command: str) -> str:
        return f"netlab exec {self.name} -- {command}"


class MachineProbe:
    """Checks in this process's own network namespace (`netlab doctor --machine`)."""

    name = "this machine"

    def read_sysctl(self, key: str) -> str | None:
        try:
            with open("/proc/sys/" + key.replace(".", "/")) as handle:
                return handle.read().strip()
        except FileNotFoundError:
            return None

    def route_get(self, destination: str) -> dict[str, Any] | None:
        return route_via(None, destination)

    def ruleset(self) -> list[dict[str, Any]]:
        return _list_ruleset()

    def forwarder_capabilities(self) -> list[int]:
        status = os.stat("/proc/self/ns/net")
        return [capabilities_of(pid) for pid in forwarder_pids((status.st_dev, status.st_ino))]

    def fix(self, command: str) -> str:
        return command


def _list_ruleset() -> list[dict[str, Any]]:
    """The nftables ruleset as JSON objects (reads it with `nft -j`, in the caller's namespace)."""
    import subprocess

    result = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return []
    return list(json.loads(result.stdout).get("nftables", []))


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def check_capability(deployment: Deployment) -> Finding:
    capabilities = deployment.host.forwarder_capabilities()
    if not capabilities:
        return Finding(
            "CAP_NET_ADMIN", True, "no forwarder running to inspect (it checks at start and exits 77)"
        )
    lacking = [mask for mask in capabilities if not mask & (1 << CAP_NET_ADMIN)]
    if lacking:
        return Finding(
            "CAP_NET_ADMIN",
            False,
            "the forwarder runs without CAP_NET_ADMIN, so it cannot use IP_TRANSPARENT",
            "AmbientCapabilities=CAP_NET_ADMIN and CapabilityBoundingSet=CAP_NET_ADMIN in its service unit",
        )
    return Finding("CAP_NET_ADMIN", True, "the forwarder has CAP_NET_ADMIN")


def check_forwarding(deployment: Deployment) -> list[Finding]:
    if deployment.reply == "relay":  # the replies are delivered to the forwarder, not routed
        return []
    findings = []
    families = {_family(address) for address in [deployment.backend_address, *deployment.clients]}
    for version, key in ((4, "net.ipv4.ip_forward"), (6, "net.ipv6.conf.all.forwarding")):
        if version not in families:
            continue
        name = "ip_forward" if version == 4 else "IPv6 forwarding"
        value = deployment.host.read_sysctl(key)
        if value != "1":
            findings.append(
                Finding(
                    name,
                    False,
                    f"{key}={value} on {deployment.host.name}: backend replies are not routed to clients",
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
    if deployment.reply == "relay":  # the forwarder sends the replies itself: nothing to rewrite
        return []
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


def _network_hint(address: str) -> str:
    return str(ipaddress.ip_network(f"{address}/{24 if _family(address) == 4 else 64}", strict=False))


CHECKS: list[Callable[[Deployment], Finding | list[Finding]]] = [
    check_capability,
    check_forwarding,
    check_rp_filter,
    check_backend_route,
    check_reply_path,
]


def diagnose(deployment: Deployment) -> list[Finding]:
    """Run every check; a check that cannot run reports itself as a finding instead of crashing."""
    from netlab.doctor_relay import RELAY_CHECKS, resolve_mode

    resolve_mode(deployment)
    findings: list[Finding] = []
    for check in [*CHECKS, *RELAY_CHECKS]:
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


__all__ = ["Deployment", "Finding", "MachineProbe", "NamespaceProbe", "diagnose", "format_findings"]
