"""Writing /sys/class/net files of a node's interfaces (e.g. RPS masks).

sysfs shows the network namespace of whoever mounted it, so this runs as a child process inside the node:
it enters a private mount namespace, mounts a fresh sysfs there (as `ip netns exec` does) and writes.
Usage: python -m netlab.programs.sysfs PATH [VALUE]
(PATH relative to /sys/class/net; without VALUE: print it)
"""

import ctypes
import os
import sys

from netlab.errors import SystemCallError

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise SystemCallError(error, f"{what}: {os.strerror(error)}")


def mount_own_sysfs() -> None:
    """Give this process a private mount namespace with a sysfs of its current network namespace."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _check(_libc.umount2(b"/sys", MNT_DETACH), "umount /sys")
    _check(_libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None), "mount sysfs")


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or ".." in argv[0]:
        print(
            "usage: python -m netlab.programs.sysfs PATH [VALUE] (PATH below /sys/class/net)", file=sys.stderr
        )
        return 64
    mount_own_sysfs()
    path = os.path.join("/sys/class/net", argv[0])
    if len(argv) == 2:
        with open(path, "w") as handle:
            handle.write(argv[1])
    with open(path) as handle:
        print(handle.read().strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
