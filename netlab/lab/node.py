"""A node of a running lab (one network namespace): run processes, open sockets, read and write sysctls, and
send datagrams from it, crafted with scapy in a process started there or through a plain socket."""

import json
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from forwarder.io.sockets import set_transparent
from netlab.errors import ProcessFailedError
from netlab.lab import netns
from netlab.lab.names import namespace_name
from netlab.lab.process import Process, python_env
from netlab.programs.crafted import Crafted, check_size
from netlab.traffic.payload import make_payload


class LabResources(Protocol):
    """What a node needs of its lab (netlab.lab.lab.Lab): where files go, cleanup, unique serial numbers.
    A protocol, so that this module does not import the lab that imports it."""

    lab_id: str
    workdir: Path
    capture_enabled: bool

    @property
    def socket_dir(self) -> Path: ...

    def defer(self, callback: Callable[..., object], *args: object) -> None: ...

    def next_serial(self) -> int: ...


class LabNode:
    """A node of a running lab: run processes, open sockets and send crafted packets inside it."""

    def __init__(self, lab: LabResources, name: str) -> None:
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
            payload = make_payload(check_size(size, 6 if ":" in dst else 4))
        self.send_crafted([Crafted(src, dst, sport, dport, payload, count, fragment_size)], timeout=timeout)

    def send_crafted(self, datagrams: Sequence[Crafted], *, timeout: float = 30.0) -> None:
        """Send several crafted datagrams, in order, with one scapy process in this node."""
        for datagram in datagrams:
            datagram.check()  # PacketError before any process starts
        # A file, not an argument: a 64 KiB payload in hex is longer than an argument may be.
        path = self.lab.workdir / f"{self.name}-send-{self.lab.next_serial()}.json"
        path.write_text(json.dumps([datagram.to_json() for datagram in datagrams]))
        self.check(
            [sys.executable, "-m", "netlab.programs.agent", "send", str(path)],
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
                set_transparent(sock)
                sock.bind((src, sport))
            sent = 0
            for _ in range(count):
                for payload in payloads:
                    sock.sendto(payload, (dst, dport))
                    sent += 1
        return sent
