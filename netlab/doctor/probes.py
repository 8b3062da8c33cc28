"""Where the doctor's checks look: a lab node's namespace or this machine's own, read-only (sysctls, routes,
the nftables ruleset, and the capabilities of the forwarder processes running there)."""

import json
import os
from typing import Any, Protocol

from pyroute2 import IPRoute


class Probe(Protocol):
    """Where checks look: a lab node, or this machine's own network namespace."""

    name: str

    def read_sysctl(self, key: str) -> str | None: ...
    def route_get(self, destination: str) -> dict[str, Any] | None: ...
    def ruleset(self) -> list[dict[str, Any]]: ...
    def forwarder_capabilities(self) -> list[int]: ...
    def fix(self, command: str) -> str: ...


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

    def forwarder_capabilities(self) -> list[int]:
        from netlab.lab import netns

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
