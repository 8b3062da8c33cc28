"""Packet captures: one pcap file per node interface, written by a thread of this process.

Each capture is an AF_PACKET socket created inside the node's namespace and bound to one interface, so it
is recording the moment `add()` returns: nothing to wait for, no tcpdump process per interface. Frames in
both directions are written as Ethernet (LINKTYPE_ETHERNET) records.
"""

import contextlib
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from forwarder.io.linux import SO_RCVBUFFORCE  # the one home of the Linux constant the socket module lacks
from netlab.errors import NetlabError
from netlab.lab import netns

ETH_P_ALL = 0x0003
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)


@dataclass
class _Tap:
    sock: socket.socket
    file: BinaryIO
    path: Path
    namespace: str = ""
    frames: int = 0


def write_record(file: BinaryIO, frame: bytes, original_length: int, timestamp: float) -> None:
    """Append one pcap record (microsecond timestamp) to `file`."""
    seconds = int(timestamp)
    file.write(struct.pack("<IIII", seconds, int((timestamp - seconds) * 1e6), len(frame), original_length))
    file.write(frame)


class Capture:
    """Records every frame of the interfaces added to it into DIRECTORY/NODE-IFNAME.pcap until closed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._taps: dict[str, _Tap] = {}
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._closed = False
        self._buffer = bytearray(SNAPLEN)
        self._thread = threading.Thread(target=self._run, name=f"capture-{directory.name}", daemon=True)
        self._thread.start()

    @property
    def paths(self) -> list[Path]:
        """The pcap files, one per captured interface."""
        return [tap.path for tap in self._taps.values()]

    def add(self, namespace: str, node: str, ifname: str) -> Path:
        """Start recording `ifname` of `node` (in `namespace`); returns the pcap path. Recording at return."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{node}-{ifname}.pcap"
        sock = netns.socket_in(namespace, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
            # bind() resolves the name in the socket's own namespace, i.e. the node's.
            sock.bind((ifname, ETH_P_ALL))
            sock.setblocking(False)
            file = open(path, "wb")  # noqa: SIM115 -- closed by close()
        except BaseException:
            sock.close()
            raise
        file.write(PCAP_HEADER)
        tap = _Tap(sock, file, path, namespace)
        with self._lock:
            self._taps[str(path)] = tap
            self._selector.register(sock, selectors.EVENT_READ, tap)
        self._wake_write.send(b"x")
        return path

    def _drain(self, tap: _Tap) -> None:
        while True:
            try:
                # MSG_TRUNC: the frame's real length even when it is longer than the buffer.
                size = tap.sock.recv_into(self._buffer, SNAPLEN, socket.MSG_TRUNC)
            except OSError:  # BlockingIOError when drained; anything else ends this tap quietly
                return
            length = min(size, SNAPLEN)
            write_record(tap.file, bytes(self._buffer[:length]), size, time.time())
            tap.frames += 1

    def _run(self) -> None:
        while not self._closed:
            # add() registers from another thread and then wakes this select (epoll allows that).
            ready = self._selector.select()
            with self._lock:
                for key, _ in ready:
                    if key.data is None:
                        with contextlib.suppress(BlockingIOError):
                            self._wake_read.recv(4096)
                    else:
                        self._drain(key.data)

    def stop(self, namespace: str) -> None:
        """Finish the recordings of interfaces in `namespace` (their sockets would keep it alive); the
        files stay in `paths`."""
        with self._lock:
            for tap in self._taps.values():
                if tap.namespace == namespace and not tap.file.closed:
                    self._selector.unregister(tap.sock)
                    self._drain(tap)
                    tap.sock.close()
                    tap.file.close()

    def close(self) -> None:
        """Write what is still queued, then close every socket and file; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._wake_write.send(b"x")
        self._thread.join(timeout=5)
        with self._lock:
            for tap in self._taps.values():
                if tap.file.closed:  # stopped earlier
                    continue
                tap.sock.setblocking(False)
                self._drain(tap)
                tap.sock.close()
                tap.file.close()
            self._selector.close()
        self._wake_read.close()
        self._wake_write.close()


def read_pcap(path: Path) -> list[bytes]:
    """The frames of a pcap file written by Capture (for tests and reports)."""
    data = path.read_bytes()
    if data[:4] != PCAP_HEADER[:4]:
        raise NetlabError(f"{path} is not a little-endian microsecond pcap file (magic {data[:4].hex()!r})")
    frames: list[bytes] = []
    offset = len(PCAP_HEADER)
    while offset < len(data):
        _, _, included, _ = struct.unpack_from("<IIII", data, offset)
        offset += 16
        frames.append(data[offset : offset + included])
        offset += included
    return frames


__all__ = ["Capture", "read_pcap"]
