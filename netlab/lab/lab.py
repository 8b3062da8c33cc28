"""A lab: network namespaces, veth links, addresses, routes and sysctls built with pyroute2 from a
Topology, and everything it starts inside them. Cleanup of each resource is registered before the
resource is created, so leaving the `with` block (normally, on an error or on Ctrl-C) removes it all.
"""

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute

from netlab.errors import TopologyError, UnknownNodeError
from netlab.lab import netns, registry
from netlab.lab.build import (
    add_route,
    attach_port,
    build_device,
    build_link,
    configure_interface,
    wait_links_usable,
)
from netlab.lab.capture import Capture
from netlab.lab.names import new_lab_id
from netlab.lab.node import LabNode
from netlab.lab.tproxy import TproxySteering, steer
from netlab.topology.model import Topology
from netlab.topology.steering import Steering


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
        """Create every node, device, link, address, route and sysctl of `topology`."""
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
        for device in topology.devices:
            namespace = self[device.node].namespace
            build_device(namespace, device.name, device.kind)
            if self.capture_enabled:
                self.captures.add(namespace, device.node, device.name)
            configure_interface(namespace, device.node, device.name, device.addresses, None)
        for link in topology.links:
            build_link(self[link.a.node].namespace, link.a.ifname, self[link.b.node].namespace, link.b.ifname)
            if self.capture_enabled:
                for end in (link.a, link.b):
                    self.captures.add(self[end.node].namespace, end.node, end.ifname)
            for end in (link.a, link.b):
                if end.master is not None:
                    attach_port(self[end.node].namespace, end.ifname, end.master)
                configure_interface(self[end.node].namespace, end.node, end.ifname, end.addresses, link.mtu)
        for route in topology.routes:
            add_route(self[route.node].namespace, route.destination, route.via)
        for steering in topology.steerings:
            self.steer(steering)
        for name in topology.nodes:
            wait_links_usable(
                self[name].namespace, name, topology.interfaces_of(name), bool(topology.addresses_of(name))
            )
        return self

    def steer(self, steering: Steering) -> TproxySteering:
        """Install a declared tproxy steering in its node (netlab.lab.tproxy.steer); removed when the lab
        closes, with its node."""
        return steer(
            self[steering.node],
            version=steering.version,
            to_port=steering.to_port,
            nft=steering.nft,
            rule=steering.rule,
            route=steering.route,
            **steering.selectors(),
        )


@contextlib.contextmanager
def lab(topology: Topology | None = None, **kwargs: object) -> Iterator[Lab]:
    """`with lab(topology) as l:` builds the topology and removes everything afterwards."""
    with Lab(**kwargs) as running:  # type: ignore[arg-type]
        if topology is not None:
            running.build(topology)
        yield running
