"""The process's Linux capabilities: read them, and give them all up once nothing needs one any more.

A process may always lower its own sets, so dropping needs no privilege: one capset(2) with every set
empty. The kernel then clears the ambient set as well (a capability can only be ambient while it is both
permitted and inheritable). The bounding set is left alone: lowering it needs CAP_SETPCAP, and with the
permitted set empty and no set-uid execs (the units set NoNewPrivileges=yes) nothing can be regained.
"""

import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from forwarder.io.linux import libc_function

# struct __user_cap_header_struct.version for 64-bit capability sets (two 32-bit words per set).
CAPABILITY_VERSION_3 = 0x20080522
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
# capability(7), in bit order; a bit beyond the list is named by its number.
NAMES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
# The /proc/PID/status lines of the five sets, and the field each fills.
STATUS_FIELDS = {
    "CapInh": "inheritable",
    "CapPrm": "permitted",
    "CapEff": "effective",
    "CapBnd": "bounding",
    "CapAmb": "ambient",
}


@dataclass(frozen=True, slots=True)
class CapabilitySets:
    """A process's capability sets as bit masks (bit N is capability N)."""

    effective: int
    permitted: int
    inheritable: int
    ambient: int = 0
    bounding: int = 0

    @property
    def held(self) -> int:
        """Every capability the process could still use or pass on (the bounding set only limits)."""
        return self.effective | self.permitted | self.inheritable | self.ambient


def names(mask: int) -> list[str]:
    """The capabilities in `mask` by name, lowest bit first (`CAP_40` for one this list does not know)."""
    bits = [bit for bit in range(mask.bit_length()) if mask >> bit & 1]
    return [NAMES[bit] if bit < len(NAMES) else f"CAP_{bit}" for bit in bits]


def parse_status(text: str) -> CapabilitySets:
    """The capability sets in the text of /proc/PID/status (`CapEff:\t0000000000003000`, ...).

    Raises ValueError when a set is missing or not hexadecimal: a kernel without CapAmb (before 4.3)
    is not one this forwarder runs on.
    """
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        field = STATUS_FIELDS.get(key)
        if colon and field is not None:
            try:
                found[field] = int(value.strip(), 16)
            except ValueError:
                raise ValueError(f"{key}: {value.strip()!r} is not a hexadecimal capability mask") from None
    missing = [key for key, field in STATUS_FIELDS.items() if field not in found]
    if missing:
        raise ValueError(
            f"no {', '.join(missing)} line in the process status: expected all of {list(STATUS_FIELDS)}"
        )
    return CapabilitySets(**found)


def of_process(pid: int | str = "self") -> CapabilitySets:
    """The capability sets of process `pid` (default: this one), from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        return parse_status(status.read())


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_Words = _Data * 2  # version 3: the low 32 capabilities, then the high ones


def _libc_call(name: str) -> Callable[..., int]:
    function = libc_function(name, (ctypes.POINTER(_Header), ctypes.POINTER(_Data)), ctypes.c_int)
    if function is None:
        raise OSError(errno.ENOSYS, f"this C library has no {name}")
    return function


def _check(result: int, call: str) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{call}: {os.strerror(number)}")


def capget() -> CapabilitySets:
    """This thread's effective, permitted and inheritable sets, from capget(2) (no /proc needed)."""
    header = _Header(CAPABILITY_VERSION_3, 0)
    words = _Words()
    _check(_libc_call("capget")(ctypes.byref(header), words), "capget")
    return CapabilitySets(
        effective=words[0].effective | words[1].effective << 32,
        permitted=words[0].permitted | words[1].permitted << 32,
        inheritable=words[0].inheritable | words[1].inheritable << 32,
    )


def drop_all() -> int:
    """Empty the effective, permitted and inheritable sets (and so the ambient one) of this process; return
    the capabilities it held before (0: there was nothing to drop, and no capset(2) was made).

    Raises OSError when the kernel refuses (EPERM from a seccomp filter that denies capset). Call it while
    the process has one thread: capabilities are per thread, and the forwarder starts none.
    """
    before = capget()
    if not before.held:
        return 0
    header = _Header(CAPABILITY_VERSION_3, 0)
    _check(_libc_call("capset")(ctypes.byref(header), _Words()), "capset")
    return before.held
