"""`netlab doctor` for relay mode (`--reply relay`): does the host deliver the backend's replies, and only
them, to the forwarder? The kernel answers (RTM_GETROUTE, the forwarder's own start-up question, asked in
the host's namespace) for a reply from the backend's reply port and for the backend's other traffic; the
nftables ruleset tells whether fragments are reassembled before routing. Each missing piece is named with
the rule that fixes it; the IPv6 twin is checked on the IPv6 deployment.

The mode and the backend's reply ports come from the deployment, or from the running forwarder's command
line (also while systemd-socket-activate still holds its sockets).
"""

import ipaddress
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from forwarder.destination import Destination, parse_destination
from forwarder.errors import ForwarderError
from forwarder.routecheck import (
    NETLINK_ROUTE,
    TABLE,
    RouteAnswer,
    ask,
    relay_rule_text,
    route_query,
    sample_client,
)
from netlab.relayroute import reassembly_ruleset

if TYPE_CHECKING:
    from netlab.doctor import Deployment, Finding, Probe

OTHER_PORT = 33333  # a source port the backend's own traffic (a DNS lookup, say) might use


def forwarder_command_lines(probe: "Probe") -> list[list[str]]:
    """The command lines (from the forwarder's own arguments on) of forwarders in the probe's namespace,
    including one systemd-socket-activate will exec on the first datagram."""
    from netlab import netns
    from netlab.doctor import NamespaceProbe

    if isinstance(probe, NamespaceProbe):
        wanted = netns.inode(probe.namespace)
    else:
        status = os.stat("/proc/self/ns/net")
        wanted = (status.st_dev, status.st_ino)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
            status = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (status.st_dev, status.st_ino) != wanted:
            continue
        for index, part in enumerate(argv):
            module = part == "-m" and argv[index + 1 : index + 2] == ["forwarder"]
            if module or os.path.basename(part) == "systemd-transparent-udp-forwarderd":
                found.append(argv[index + (2 if module else 1) :])
                break
    return found


def relay_settings(argv: Sequence[str], backend: str) -> tuple[bool, list[int]]:
    """Whether a forwarder command line runs in relay mode, and its destinations' ports at `backend`."""
    relay = any(
        part == "--reply=relay" or (part == "--reply" and argv[index + 1 : index + 2] == ["relay"])
        for index, part in enumerate(argv)
    )
    wanted = ipaddress.ip_address(backend)
    ports = set()
    for part in argv:
        if part.startswith("-"):
            continue
        try:
            spec = parse_destination(part)
            matches = spec.port is not None and ipaddress.ip_address(spec.host) == wanted
        except (ValueError, ForwarderError):  # not a destination: an option's value
            continue
        if matches and spec.port is not None:
            ports.add(spec.port)
    return relay, sorted(ports)


def resolve_mode(deployment: "Deployment") -> None:
    """Fill in the deployment's reply mode and reply ports from the running forwarder where not given."""
    if deployment.reply is not None and deployment.backend_ports:
        return
    settings = [
        relay_settings(argv, deployment.backend_address) for argv in forwarder_command_lines(deployment.host)
    ]
    if deployment.reply is None:
        deployment.reply = "relay" if any(relay for relay, _ in settings) else "direct"
    if not deployment.backend_ports:
        deployment.backend_ports = sorted({port for _, ports in settings for port in ports})


def _kernel(probe: "Probe", requests: list[bytes]) -> list[RouteAnswer]:
    """Ask the kernel of the probe's namespace each route question in turn."""
    from netlab import netns
    from netlab.doctor import NamespaceProbe

    def asking() -> list[RouteAnswer]:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
            sock.settimeout(2)
            return [ask(sock, request) for request in requests]

    if isinstance(probe, NamespaceProbe):
        return netns.run_in(probe.namespace, asking)
    return asking()


def _reply_answers(deployment: "Deployment", sport: int) -> RouteAnswer:
    """The host's route for a UDP datagram from the backend's `sport` to a client, as it arrives."""
    family = socket.AF_INET6 if ":" in deployment.backend_address else socket.AF_INET
    clients = list(deployment.clients)
    client = clients[0] if clients else sample_client(family, lambda _: False)
    (to_backend,) = _kernel(deployment.host, [route_query(family, deployment.backend_address)])
    if to_backend.error:
        return to_backend
    request = route_query(
        family,
        client,
        source=deployment.backend_address,
        iif=0 if to_backend.local else to_backend.oif,
        ports=(sport, 40000),
        sequence=2,
    )
    (answer,) = _kernel(deployment.host, [request])
    return answer


def _family_name(deployment: "Deployment") -> str:
    return "relay rule IPv6 twin" if ":" in deployment.backend_address else "relay rule"


def check_relay_rule(deployment: "Deployment") -> "list[Finding]":
    """Each reply port of the backend is delivered locally (the rule, and its IPv6 twin)."""
    from netlab.doctor import Finding

    if deployment.reply != "relay":
        return []
    name = _family_name(deployment)
    if not deployment.backend_ports:
        return [
            Finding(
                name,
                False,
                f"cannot tell the port {deployment.backend_address} answers from: no forwarder destination "
                "names it",
                "give netlab doctor --backend-port PORT",
            )
        ]
    findings = []
    for port in deployment.backend_ports:
        destination = _destination(deployment.backend_address, port)
        answer = _reply_answers(deployment, port)
        fate = "refuses" if answer.error else "forwards"
        if answer.local:
            findings.append(Finding(name, True, f"replies from {destination} are delivered to the forwarder"))
            continue
        findings.append(
            Finding(
                name,
                False,
                f"replies from {destination} are not delivered to {deployment.host.name}'s sockets: the "
                f"kernel {fate} them, so the forwarder never relays them",
                deployment.host.fix(relay_rule_text(destination).replace("` and `", " && ").strip("`")),
            )
        )
    return findings


def check_rule_scope(deployment: "Deployment") -> "list[Finding]":
    """The relay rule leaves the backend's other traffic (other ports) routed as before."""
    from netlab.doctor import Finding

    if deployment.reply != "relay" or ipaddress.ip_address(deployment.backend_address).is_loopback:
        return []
    answer = _reply_answers(deployment, OTHER_PORT)
    name = "relay rule swallows backend traffic"
    if not answer.local:
        return [Finding(name, True, f"{deployment.backend_address}'s other traffic is routed as before")]
    ports = [str(port) for port in deployment.backend_ports] or ["PORT"]
    six = ":" in deployment.backend_address
    ip = "ip -6" if six else "ip"
    return [
        Finding(
            name,
            False,
            f"the rule delivers all of {deployment.backend_address}'s traffic to {deployment.host.name}, "
            f"not only its replies from port {', '.join(ports)}: its own lookups and updates never leave",
            deployment.host.fix(
                f"{ip} rule del from {deployment.backend_address} lookup {TABLE} && {ip} rule add from "
                f"{deployment.backend_address} ipproto udp sport {ports[0]} lookup {TABLE}"
            ),
        )
    ]


def _tracks_connections(ruleset: list[dict[str, Any]]) -> bool:
    """True when some rule uses connection tracking (ct, nat), which reassembles fragments first."""
    for item in ruleset:
        chain = item.get("chain")
        if chain is not None and chain.get("type") == "nat":
            return True
        rule = item.get("rule")
        if rule is None:
            continue
        for expression in rule.get("expr", []):
            text = str(expression)
            if "'ct'" in text or "masquerade" in text or "snat" in text or "dnat" in text:
                return True
    return False


def check_reassembly(deployment: "Deployment") -> "list[Finding]":
    """Fragmented replies need reassembly before routing for a port-matching rule to see them."""
    from netlab.doctor import Finding

    if deployment.reply != "relay" or ipaddress.ip_address(deployment.backend_address).is_loopback:
        return []
    name = "relay reassembly"
    if _tracks_connections(deployment.host.ruleset()):
        return [Finding(name, True, "connection tracking reassembles fragmented replies before routing")]
    return [
        Finding(
            name,
            False,
            "nothing reassembles fragments before routing on the host: a fragmented reply's later "
            "fragments carry no UDP ports, miss the relay rule and are forwarded, so the reply is lost",
            "turn connection tracking on (nft -f FILE):\n" + reassembly_ruleset(),
        )
    ]


def _destination(address: str, port: int) -> Destination:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return Destination(family, address, port)


RELAY_CHECKS = [check_relay_rule, check_rule_scope, check_reassembly]

__all__ = ["RELAY_CHECKS", "forwarder_command_lines", "relay_settings", "resolve_mode"]
