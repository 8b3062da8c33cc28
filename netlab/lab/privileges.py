"""Which Linux capabilities this process has, read from /proc/self/status, and what the lab needs."""

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21

_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW", CAP_SYS_ADMIN: "CAP_SYS_ADMIN"}
LAB_CAPABILITIES = (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_NET_RAW)


def effective_capabilities() -> int:
    """The effective capability mask of this process."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_lab_capabilities() -> list[str]:
    """Names of the capabilities the lab needs and this process lacks (empty when all are there)."""
    mask = effective_capabilities()
    return [_NAMES[cap] for cap in LAB_CAPABILITIES if not mask & (1 << cap)]


def missing_reason() -> str | None:
    """A sentence naming the missing capabilities, or None when the lab can run."""
    missing = missing_lab_capabilities()
    if not missing:
        return None
    return (
        f"needs {', '.join(missing)} (network namespaces, veth links and spoofed packets): "
        "run as root or grant the capabilities"
    )
