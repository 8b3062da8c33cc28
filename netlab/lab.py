"""A lab: network namespaces, veth links, addresses, routes and sysctls built with pyroute2 from a
Topology, and everything it starts inside them. Cleanup of each resource is registered before the
resource is created, so leaving the `with` block (normally, on an error or on Ctrl-C) removes it all.
"""

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute

from netlab import netns, registry
from netlab.bridge import build_bridge
from netlab.capture import Capture
from netlab.crafted import MAX_PAYLOAD, MAX_PAYLOAD_IPV6, Crafted
from netlab.errors import LabTimeoutError, ProcessFailedError, TopologyError, UnknownNodeError
from netlab.names import namespace_name, new_lab_id
from netlab.process import Process
from netlab.topology import Topology, parse_interface

IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75


class LabNode:
    """A node of a running lab: run processes, open sockets and send crafted packets inside it."""

    def __init__(self, lab: "Lab", name: str) -> None:
        self.lab = lab
        self.name = name
        self.namespace = namespace_name(lab.lab_id, name)

    def __repr__(self) -> str:
        return f"LabNode({self.name!r}, namespace={self.namespace!r})"

    def run(
        self,
        argv: Sequence[str],
        *,
        label: str | None = None,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Process:
        """Start `argv` in this node; the lab stops it (SIGTERM, then SIGKILL) when it closes."""
        label = label or Path(argv[0]).name
        log_path = self.lab.workdir / f"{self.name}-{label}-{self.lab.next_serial()}.log"
        process = Process(argv, namespace=self.namespace, log_path=log_path, env=env, pass_fds=pass_fds)
        self.lab.defer(process.stop)
        return process

    def check(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        label: str | None = None,
    ) -> str:
        """Run `argv` in this node to completion; return its output, raise ProcessFailedError if it fails."""
        process = self.run(argv, env=env, label=label)
        code = process.wait(timeout)
        if code != 0:
            raise ProcessFailedError(f"{' '.join(argv)!r} in {self.name!r} exited {code}: {process.output()}")
        return process.output()

    def open_socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket living in this node's namespace, closed when the lab closes."""
        sock = netns.socket_in(self.namespace, family, kind)
        self.lab.defer(sock.close)
        return sock

    def udp_socket(self, address: str, port: int = 0) -> socket.socket:
        """A UDP socket bound to address:port in this node."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = self.open_socket(family, socket.SOCK_DGRAM)
        sock.bind((address, port))
        return sock

    def sysctl(self, key: str, value: str | None = None) -> str:
        """Read sysctl `key` in this node, setting it to `value` first when given."""
        if value is not None:
            netns.write_sysctl(self.namespace, key, value)
        return netns.read_sysctl(self.namespace, key)

    def send_udp(
        self,
        *,
        src: str,
        dst: str,
        sport: int,
        dport: int,
        payload: bytes = b"",
        size: int | None = None,
        count: int = 1,
        fragment_size: int = 0,
        timeout: float = 30.0,
    ) -> None:
        """Craft a UDP datagram with scapy (any source: it may be spoofed) and send it `count` times.

        `size` makes a payload of that many bytes (0..65507) instead of `payload`; datagrams larger than
        the MTU are sent as fragments (or as fragments of at most `fragment_size` bytes when given).
        """
        if size is not None:
            payload = make_payload(size)
        self.send_crafted([Crafted(src, dst, sport, dport, payload, count, fragment_size)], timeout=timeout)

    def send_crafted(self, datagrams: Sequence[Crafted], *, timeout: float = 30.0) -> None:
        """Send several crafted datagrams, in order, with one scapy process in this node."""
        for datagram in datagrams:
            limit = MAX_PAYLOAD if ":" not in datagram.dst else MAX_PAYLOAD_IPV6
            if not 0 <= len(datagram.payload) <= limit:
                raise TopologyError(
                    f"payload of {len(datagram.payload)} bytes: a UDP payload is 0 to {limit}"
                )
        # A file, not an argument: a 64 KiB payload in hex is longer than an argument may be.
        path = self.lab.workdir / f"{self.name}-send-{self.lab.next_serial()}.json"
        path.write_text(json.dumps([datagram.to_json() for datagram in datagrams]))
        self.check(
            [sys.executable, "-m", "netlab.agent", "send", str(path)],
            timeout=timeout,
            env=python_env(),
            label="scapy-send",
        )

    def send_fast(
        self,
        *,
        dst: str,
        dport: int,
        payloads: Sequence[bytes] = (b"",),
        src: str | None = None,
        sport: int = 0,
        count: int = 1,
    ) -> int:
        """Send datagrams quickly through an ordinary UDP socket in this node (the kernel fragments).

        With `src` not an address of this node, the socket is bound with IP_TRANSPARENT, so the datagrams
        leave with that (spoofed) source without scapy. Sends every payload `count` times; returns how many.
        """
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        with netns.socket_in(self.namespace, family, socket.SOCK_DGRAM) as sock:
            if src is not None:
                level, option = (
                    (socket.SOL_IP, IP_TRANSPARENT)
                    if family == socket.AF_INET
                    else (socket.IPPROTO_IPV6, IPV6_TRANSPARENT)
                )
                sock.setsockopt(level, option, 1)
                sock.bind((src, sport))
            sent = 0
            for _ in range(count):
                for payload in payloads:
                    sock.sendto(payload, (dst, dport))
                    sent += 1
        return sent


def make_payload(size: int) -> bytes:
    """A recognisable payload of `size` bytes: a repeating, position-revealing byte pattern."""
    return bytes(index % 251 for index in range(size))


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Python child that must import this checkout's packages."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


class Lab:
    """Builds a topology and guarantees its removal; use as a context manager."""

    def __init__(
        self,
        workdir: Path | None = None,
        description: str = "",
        keep_workdir: bool = False,
        capture: bool = False,
    ) -> None:
        """`workdir` holds logs, sockets and captures (a temporary directory, removed at close, by default);
        with `capture`, every interface the lab creates is recorded to workdir/captures/NODE-IFNAME.pcap."""
        self.lab_id = new_lab_id()
        self.record = registry.new_record(self.lab_id, description)
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"netlab-{self.lab_id}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_workdir = keep_workdir
        self.scratch = registry.new_scratch(self.lab_id)
        if self._own_workdir and not keep_workdir:
            self.scratch.add(self.workdir)
        self.nodes: dict[str, LabNode] = {}
        self._stack = contextlib.ExitStack()
        self._serial = 0
        self.capture_enabled = capture
        self._capture: Capture | None = None
        self._socket_dir: Path | None = None
        self.detached = False

    @classmethod
    def attached(cls, lab_id: str, nodes: Sequence[str], description: str = "") -> "Lab":
        """A handle on the existing lab `lab_id` (made by `netlab up`) with these nodes: what it starts is
        stopped when it closes, the lab's namespaces are not touched."""
        handle = cls(description=description)
        handle.lab_id = lab_id
        handle.nodes = {name: LabNode(handle, name) for name in nodes}
        return handle

    def detach(self) -> None:
        """Let the built namespaces outlive this process: only `netlab down` removes them afterwards.

        Everything registered for cleanup so far is forgotten, so call it right after `build()`.
        """
        self.record.detached = True
        self.record.save()
        self._stack.pop_all()
        self.detached = True

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def defer(self, callback: Callable[..., object], *args: object) -> None:
        """Register cleanup to run when the lab closes (last registered runs first)."""
        self._stack.callback(callback, *args)

    def __enter__(self) -> "Lab":
        registry.reap_stale()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __getitem__(self, name: str) -> LabNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise UnknownNodeError(
                f"lab {self.lab_id} has no node {name!r}; known nodes: {sorted(self.nodes)}"
            ) from None

    def close(self) -> None:
        """Stop processes, close sockets, delete namespaces and the lab's record; safe to call twice.

        Only the process that made the lab cleans it up: a forked child (pyroute2 forks to create a
        namespace) that receives Ctrl-C or SIGTERM unwinds this same stack, and must not tear the lab down
        under its parent.
        """
        if os.getpid() != self.record.owner_pid:
            return
        blocked = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # a second Ctrl-C must not cut cleanup
        try:
            self._stack.close()
        finally:
            try:
                if not self.detached:
                    self.record.delete()
                self.scratch.delete()
                if self._own_workdir and not self.keep_workdir:
                    shutil.rmtree(self.workdir, ignore_errors=True)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def destroy_node(self, name: str) -> None:
        """Delete node `name`'s namespace now, as when a container goes away mid-test: its captures stop,
        its processes are killed, and its links vanish with it once nothing holds the namespace any more
        (close the sockets the test opened there first). The lab's cleanup tolerates the node being gone."""
        node = self[name]
        if self._capture is not None:
            self._capture.stop(node.namespace)
        registry.destroy_namespace(node.namespace)

    @property
    def captures(self) -> Capture:
        """The lab's packet capture (created on first use, closed with the lab)."""
        if self._capture is None:
            self.defer(self._close_capture)
            self._capture = Capture(self.workdir / "captures")
        return self._capture

    @property
    def socket_dir(self) -> Path:
        """A short-named private directory for AF_UNIX sockets (their paths are limited to 107 bytes, which a
        run directory named after a test id easily exceeds); removed when the lab closes."""
        if self._socket_dir is None:
            self.defer(self._remove_socket_dir)
            self._socket_dir = Path(tempfile.mkdtemp(prefix=f"nl-{self.lab_id}-"))
            self.scratch.add(self._socket_dir)
        return self._socket_dir

    def _remove_socket_dir(self) -> None:
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _close_capture(self) -> None:
        if self._capture is not None:
            self._capture.close()

    def build(self, topology: Topology) -> "Lab":
        """Create every node, link, address, route and sysctl of `topology`."""
        topology.validate()
        new_nodes = [LabNode(self, name) for name in topology.nodes]
        for node in new_nodes:
            if node.name in self.nodes:
                raise TopologyError(f"lab already has a node {node.name!r}")
            self.nodes[node.name] = node
            self.record.namespaces.append(node.namespace)
        self.record.save()
        self.defer(self.record.delete)
        for node in new_nodes:
            self.defer(registry.destroy_namespace, node.namespace)
            netns.create(node.namespace)
            with IPRoute(netns=node.namespace) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            # Duplicate address detection is pointless between private namespaces, and while a link-local
            # address is tentative the kernel sends no neighbour solicitation (the first datagram to a
            # neighbour waits a retransmit second). A topology may still turn it back on.
            for scope in ("all", "default"):
                node.sysctl(f"net.ipv6.conf.{scope}.accept_dad", "0")
            for key, value in topology.nodes[node.name].sysctls.items():
                node.sysctl(key, value)
        for link in topology.links:
            self._build_link(link.a.node, link.a.ifname, link.b.node, link.b.ifname, link.mtu)
            if self.capture_enabled:
                for end in (link.a, link.b):
                    self.captures.add(self[end.node].namespace, end.node, end.ifname)
            for end in (link.a, link.b):
                self._configure_interface(end.node, end.ifname, end.addresses, link.mtu)
        for bridge in topology.bridges:
            build_bridge(self, bridge)
            if self.capture_enabled:
                for name, ifname, _ in bridge.ends():
                    self.captures.add(self[name].namespace, name, ifname)
        for route in topology.routes:
            self._add_route(route.node, route.destination, route.via)
        for name in topology.nodes:
            self._wait_links_usable(name, topology.interfaces_of(name), bool(topology.addresses_of(name)))
        return self

    def _wait_links_usable(
        self, node: str, ifnames: list[str], has_addresses: bool, timeout: float = 10.0
    ) -> None:
        # A veth's carrier comes up through the kernel's link-watch work (up to a second later), and only
        # then does IPv6 configure the link (multicast route, link-local address): a datagram sent before is
        # dropped (Ip6InNoRoutes). Wait until every interface is operationally up with a usable fe80 address.
        if not ifnames:
            return
        with IPRoute(netns=self[node].namespace) as ipr:

            def usable() -> bool:
                links = {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}
                indexes = []
                for ifname in ifnames:
                    link = links.get(ifname)
                    if link is None or link.get_attr("IFLA_OPERSTATE") != "UP":
                        return False
                    indexes.append(link["index"])
                if not has_addresses or self[node].sysctl("net.ipv6.conf.all.disable_ipv6") == "1":
                    return True
                link_local = {
                    address["index"]
                    for address in ipr.get_addr(family=socket.AF_INET6)
                    if str(address.get_attr("IFA_ADDRESS")).startswith("fe80:")
                    and not (address.get_attr("IFA_FLAGS") or address["flags"]) & IFA_F_TENTATIVE
                }
                return all(index in link_local for index in indexes)

            wait_until(usable, f"the links {ifnames} of {node!r} to be up", timeout)

    def build_veth(self, a: str, a_ifname: str, b: str, b_ifname: str) -> None:
        """A veth pair between two nodes of this lab (for netlab.bridge); addresses come separately."""
        self._build_link(a, a_ifname, b, b_ifname, None)

    def configure_interface(self, node: str, ifname: str, addresses: list[str], mtu: int | None) -> None:
        """Addresses, MTU and state up for an interface of a node (for netlab.bridge)."""
        self._configure_interface(node, ifname, addresses, mtu)

    def _build_link(self, a: str, a_ifname: str, b: str, b_ifname: str, mtu: int | None) -> None:
        # The pair is created inside node a with its peer placed straight into node b, so no interface
        # ever appears in the root namespace.
        peer_fd = os.open(netns.netns_path(self[b].namespace), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with IPRoute(netns=self[a].namespace) as ipr:
                ipr.link("add", ifname=a_ifname, kind="veth", peer={"ifname": b_ifname, "net_ns_fd": peer_fd})
        finally:
            os.close(peer_fd)

    def _configure_interface(self, node: str, ifname: str, addresses: list[str], mtu: int | None) -> None:
        with IPRoute(netns=self[node].namespace) as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            for text in addresses:
                interface = parse_interface(text, f"{node}/{ifname}")
                extra = {"flags": IFA_F_NODAD} if interface.version == 6 else {}
                ipr.addr(
                    "add",
                    index=index,
                    address=str(interface.ip),
                    prefixlen=interface.network.prefixlen,
                    **extra,
                )
            settings: dict[str, object] = {"state": "up"}
            if mtu is not None:
                settings["mtu"] = mtu
            ipr.link("set", index=index, **settings)

    def _add_route(self, node: str, destination: str, via: str) -> None:
        gateway = ipaddress.ip_address(via)
        if destination.startswith("default"):
            destination = "0.0.0.0/0" if gateway.version == 4 else "::/0"
        network = ipaddress.ip_network(destination)
        family = socket.AF_INET if network.version == 4 else socket.AF_INET6
        with IPRoute(netns=self[node].namespace) as ipr:
            ipr.route(
                "add",
                dst=str(network.network_address),
                dst_len=network.prefixlen,
                gateway=str(gateway),
                family=family,
            )


def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll `condition()` (a cheap check of kernel state) until it is true, with a deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not condition():
        if time.monotonic() > deadline:
            raise LabTimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


@contextlib.contextmanager
def lab(topology: Topology | None = None, **kwargs: object) -> Iterator[Lab]:
    """`with lab(topology) as l:` builds the topology and removes everything afterwards."""
    with Lab(**kwargs) as running:  # type: ignore[arg-type]
        if topology is not None:
            running.build(topology)
        yield running
