"""Doing things inside a network namespace from this process: a short-lived thread joins the namespace
(setns affects only the calling thread), so sockets it creates and sysctls it writes belong to that
namespace, while the rest of the process stays where it is.
"""

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import netns as pyroute2_netns

from netlab.errors import SystemCallError

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)

T = TypeVar("T")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def setns(fd: int) -> None:
    """Move the calling thread (or a child before exec) into the namespace behind `fd`."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise SystemCallError(error, f"setns: {os.strerror(error)}")


def create(name: str) -> None:
    pyroute2_netns.create(name)


def remove(name: str) -> None:
    pyroute2_netns.remove(name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def run_in(name: str, function: Callable[[], T]) -> T:
    """Call `function` in a thread that has joined namespace `name`; return its result or raise its error."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)
            finally:
                os.close(fd)
            result.append(function())
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def socket_in(name: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket that lives in namespace `name` (a socket keeps the namespace it was created in)."""
    return run_in(name, lambda: socket.socket(family, kind, proto))


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def write_sysctl(name: str, key: str, value: str) -> None:
    """Set sysctl `key` (dotted form, e.g. net.ipv4.ip_forward) inside namespace `name`."""

    def write() -> None:
        with open(sysctl_path(key), "w") as handle:
            handle.write(value)

    run_in(name, write)


def read_sysctl(name: str, key: str) -> str:
    """Read sysctl `key` inside namespace `name`."""

    def read() -> str:
        with open(sysctl_path(key)) as handle:
            return handle.read().strip()

    return run_in(name, read)


def inode(name: str) -> tuple[int, int]:
    """(device, inode) identifying the namespace, as /proc/PID/ns/net shows it."""
    status = os.stat(netns_path(name))
    return (status.st_dev, status.st_ino)


def pids_in(name: str) -> list[int]:
    """Every process whose network namespace is `name`."""
    try:
        target = inode(name)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (status.st_dev, status.st_ino) == target and int(entry) != os.getpid():
            found.append(int(entry))
    return found
