"""Exec a command with inherited sockets placed at fds 3, 4, ... and LISTEN_FDS/LISTEN_PID set for it, the
way PID 1 hands a .socket unit's sockets to its service. It imports nothing but the standard library (netlab's
`__init__` is lazy), so it costs one short Python start:

    python -m netlab.programs.fdpass FD[,FD...] -- COMMAND [ARG...]

LISTEN_PID is this process's pid, which exec keeps, so it is the command's own pid. Used to hand sockets the
lab holds to systemd-socket-activate, which passes inherited LISTEN_FDS on to the service it starts.
"""

import fcntl
import os
import sys

SD_LISTEN_FDS_START = 3


def place(fds: list[int]) -> None:
    """Move `fds` to 3, 4, ... (in order), whatever numbers they had, and close the originals."""
    first_free = SD_LISTEN_FDS_START + len(fds)
    # Copies above the target range first, so a source that is also a target is never overwritten early.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, first_free) for fd in fds]
    for fd in fds:
        if fd >= first_free:
            os.close(fd)
    for index, fd in enumerate(high):
        os.dup2(fd, SD_LISTEN_FDS_START + index, inheritable=True)
        os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m netlab.programs.fdpass FD[,FD...] -- COMMAND [ARG...]", file=sys.stderr)
        return 64
    fds = [int(text) for text in argv[0].split(",")]
    place(fds)
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ.pop("LISTEN_FDNAMES", None)
    os.execvp(argv[2], argv[2:])
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
