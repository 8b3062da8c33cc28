"""What the doctor checks (a Deployment) and what each check finds (a Finding): the data every check
module shares, in a module of its own so that the check modules need not import each other."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from netlab.doctor.probes import Probe


@dataclass
class Finding:
    """One check's result: `ok`, or what is missing and the command or rule that fixes it."""

    check: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class Deployment:
    """What the doctor checks: the host running the forwarder, its backend, and client addresses."""

    host: Probe
    backend: Probe | None
    backend_address: str
    host_address: str  # the address clients send to, which replies must come from
    clients: Sequence[str] = field(default_factory=list)
    host_backend_address: str = "HOST_ADDRESS_ON_BACKEND_NETWORK"  # the backend's gateway, for fix hints
    reply_mode: str | None = None  # "direct" or "relay"; None: as the running forwarder's --reply says
    backend_ports: Sequence[int] = ()  # the ports the backend answers from; (): the forwarder's DESTs
