"""Where the doctor's checks look: a lab node's namespace or this machine's own, read-only (sysctls, routes,
policy rules and the kernel's route for a given packet, the nftables ruleset, and the capabilities and
command lines of the forwarder processes running there)."""

import ipaddress
import json
import os
import socket
from typing import Any, NamedTuple, Protocol

from pyroute2 import IPRoute

from netlab.service.relay import RouteAnswer, route_for_packet


class Probe(Protocol):
    """Where checks look: a lab node, or this machine's own network namespace."""

    name: str

    def read_sysctl(self, key: str) -> str | None: ...
    def route_get(self, destination: str) -> dict[str, Any] | None: ...
    def ruleset(self) -> list[dict[str, Any]]: ...
    def forwarder_capabilities(self) -> list["ProcessCapabilities"]: ...
    def forwarder_command_lines(self) -> list[list[str]]: ...
    def forwarder_launches(self) -> list["Launch"]: ...
    def packet_route(  # noqa: PLR0913 - the fields of one route query
        self, src: str, dst: str, sport: int, proto: int, iif: int | None, *, mark: int | None = None
    ) -> RouteAnswer | None: ...
    def rules(self, version: int) -> list["Rule"]: ...
    def local_default_tables(self, version: int) -> set[int]: ...
    def fix(self, command: str) -> str: ...


class Rule(dict[str, Any]):
    """A policy rule as the doctor reads it: src (network or None), ip_proto, sport ((first, last) or
    None), iif, fwmark (and fwmask; None without), table, priority."""


def _rules(namespace: str | None, version: int) -> list[Rule]:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    found = []
    with _netns_ipr(namespace) as ipr:
        for message in ipr.get_rules(family=family):
            source = message.get_attr("FRA_SRC")
            sport = message.get_attr("FRA_SPORT_RANGE")
            found.append(
                Rule(
                    src=ipaddress.ip_network(f"{source}/{message['src_len']}", strict=False)
                    if source
                    else None,
                    ip_proto=message.get_attr("FRA_IP_PROTO"),
                    sport=tuple(int(port) for port in sport.split(":")) if sport else None,
                    iif=message.get_attr("FRA_IIFNAME"),
                    fwmark=message.get_attr("FRA_FWMARK"),
                    fwmask=message.get_attr("FRA_FWMASK"),
                    table=message.get_attr("FRA_TABLE") or message["table"],
                    priority=message.get_attr("FRA_PRIORITY") or 0,
                )
            )
    return found


def _local_default_tables(namespace: str | None, version: int) -> set[int]:
    """The tables holding `local 0.0.0.0/0` (or `local ::/0`): where a relay rule, or a tproxy mark's rule,
    must send the datagrams to deliver them to this host."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with _netns_ipr(namespace) as ipr:
        return {
            int(route.get_attr("RTA_TABLE") or route["table"])
            for route in ipr.get_routes(family=family)  # every table
            if route["type"] == 2 and route["dst_len"] == 0  # RTN_LOCAL
        }


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


DAEMON = b"systemd-transparent-udp-forwarderd"


def is_forwarder(argv: list[bytes]) -> bool:
    """True for the forwarder's command lines: the daemon run directly (`/usr/sbin/...` from the Debian
    package), pip's console script as the kernel runs it (`.../bin/python3 .../bin/systemd-transparent-
    udp-forwarderd ...`, after its shebang), and `python -m forwarder ...`."""
    if not argv:
        return False
    if os.path.basename(argv[0]) == DAEMON:
        return True
    if not os.path.basename(argv[0]).startswith(b"python"):
        return False
    for index, arg in enumerate(argv[1:], 1):  # the interpreter's options, then the script or -m MODULE
        if arg == b"-m":
            return argv[index + 1 : index + 2] == [b"forwarder"]
        if not arg.startswith(b"-"):
            return os.path.basename(arg) == DAEMON
    return False


def _command_lines(namespace_inode: tuple[int, int] | None) -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every process, in the namespace with that (dev, inode), or anywhere if None."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")[:-1]
            if namespace_inode is not None:
                status = os.stat(f"/proc/{entry}/ns/net")
                if (status.st_dev, status.st_ino) != namespace_inode:
                    continue
        except OSError:
            continue
        found.append((int(entry), argv))
    return found


def forwarder_pids(namespace_inode: tuple[int, int] | None) -> list[int]:
    """Pids of forwarder processes, in the namespace with that (dev, inode), or anywhere if None."""
    return [pid for pid, argv in _command_lines(namespace_inode) if is_forwarder(argv)]


class Launch(NamedTuple):
    """A forwarder's command line (`argv`) and, while systemd-socket-activate waits for its first datagram,
    the activator's own options before it (`activator`: its `-l` and `--fdname` say which sockets)."""

    activator: list[str]
    argv: list[str]

    @property
    def arguments(self) -> list[str]:
        """The forwarder's options and destinations: its command line after the program."""
        return forwarder_arguments(self.argv)


def forwarder_arguments(argv: list[str]) -> list[str]:
    """What follows the program in a forwarder command line is_forwarder() accepts."""
    if os.path.basename(argv[0]) == DAEMON.decode():
        return argv[1:]
    for index, arg in enumerate(argv[1:], 1):
        if arg == "-m":
            return argv[index + 2 :]
        if not arg.startswith("-"):
            return argv[index + 1 :]
    return []


def forwarder_launches(namespace_inode: tuple[int, int] | None) -> list[Launch]:
    """The forwarders, running or still waiting under systemd-socket-activate for their first datagram
    (then the part of the activator's command line that starts the forwarder, and the activator's own)."""
    found = []
    for _, argv in _command_lines(namespace_inode):
        waiting = argv and os.path.basename(argv[0]) == b"systemd-socket-activate"
        for start in range(len(argv) if waiting else 1):
            if is_forwarder(argv[start:]):
                decoded = [os.fsdecode(arg) for arg in argv]
                found.append(Launch(decoded[:start], decoded[start:]))
                break
    return found


def forwarder_command_lines(namespace_inode: tuple[int, int] | None) -> list[list[str]]:
    """The command lines of forwarders (forwarder_launches' `argv`)."""
    return [launch.argv for launch in forwarder_launches(namespace_inode)]


def reply_mode_of(argv: list[str]) -> str:
    """The `--reply` mode a forwarder command line asks for: 'direct' (the default) or 'relay'."""
    mode = "direct"
    for index, arg in enumerate(argv):
        if arg == "--reply" and index + 1 < len(argv):
            mode = argv[index + 1]
        elif arg.startswith("--reply="):
            mode = arg.removeprefix("--reply=")
    return mode


class ProcessCapabilities(NamedTuple):
    """A process's effective and bounding capability masks (/proc/PID/status CapEff, CapBnd)."""

    effective: int
    bounding: int


def capabilities_of(pid: int) -> ProcessCapabilities:
    """The capability masks of process `pid` (0 for a set /proc does not show)."""
    masks = {"CapEff:": 0, "CapBnd:": 0}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = line.split(maxsplit=1)[0] if line.strip() else ""
            if key in masks:
                masks[key] = int(line.split()[1], 16)
    return ProcessCapabilities(masks["CapEff:"], masks["CapBnd:"])


class NamespaceProbe:
    """Checks inside a lab node (a named network namespace)."""

    def __init__(self, name: str, namespace: str) -> None:
        self.name = name
        self.namespace = namespace

    def read_sysctl(self, key: str) -> str | None:
        from netlab.lab import netns

        try:
            return netns.read_sysctl(self.namespace, key)
        except FileNotFoundError:
            return None

    def route_get(self, destination: str) -> dict[str, Any] | None:
        return route_via(self.namespace, destination)

    def ruleset(self) -> list[dict[str, Any]]:
        from netlab.lab import netns

        return netns.run_in(self.namespace, _list_ruleset)

    def forwarder_capabilities(self) -> list[ProcessCapabilities]:
        from netlab.lab import netns

        return [capabilities_of(pid) for pid in forwarder_pids(netns.inode(self.namespace))]

    def forwarder_command_lines(self) -> list[list[str]]:
        from netlab.lab import netns

        return forwarder_command_lines(netns.inode(self.namespace))

    def forwarder_launches(self) -> list[Launch]:
        from netlab.lab import netns

        return forwarder_launches(netns.inode(self.namespace))

    def packet_route(  # noqa: PLR0913 - the fields of one route query
        self, src: str, dst: str, sport: int, proto: int, iif: int | None, *, mark: int | None = None
    ) -> RouteAnswer | None:
        return route_for_packet(self.namespace, src, dst, sport, 40000, proto, iif, mark=mark)

    def rules(self, version: int) -> list[Rule]:
        return _rules(self.namespace, version)

    def local_default_tables(self, version: int) -> set[int]:
        return _local_default_tables(self.namespace, version)

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

    def forwarder_capabilities(self) -> list[ProcessCapabilities]:
        status = os.stat("/proc/self/ns/net")
        return [capabilities_of(pid) for pid in forwarder_pids((status.st_dev, status.st_ino))]

    def forwarder_command_lines(self) -> list[list[str]]:
        status = os.stat("/proc/self/ns/net")
        return forwarder_command_lines((status.st_dev, status.st_ino))

    def forwarder_launches(self) -> list[Launch]:
        status = os.stat("/proc/self/ns/net")
        return forwarder_launches((status.st_dev, status.st_ino))

    def packet_route(  # noqa: PLR0913 - the fields of one route query
        self, src: str, dst: str, sport: int, proto: int, iif: int | None, *, mark: int | None = None
    ) -> RouteAnswer | None:
        return route_for_packet(None, src, dst, sport, 40000, proto, iif, mark=mark)

    def rules(self, version: int) -> list[Rule]:
        return _rules(None, version)

    def local_default_tables(self, version: int) -> set[int]:
        return _local_default_tables(None, version)

    def fix(self, command: str) -> str:
        return command


def _list_ruleset() -> list[dict[str, Any]]:
    """The nftables ruleset as JSON objects (reads it with `nft -j`, in the caller's namespace)."""
    import subprocess

    result = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        return []
    return list(json.loads(result.stdout).get("nftables", []))
