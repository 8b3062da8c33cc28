"""`netlab doctor`: check a lab's deployment (from its topology's roles) or this machine."""

import argparse

from netlab.cli.common import EX_FAILED, UP_LAB_KEPT, Commands, add_lab_option, print_json, require_privileges
from netlab.errors import UsageError


def cmd_doctor(args: argparse.Namespace) -> int:
    from netlab.doctor.checks import Deployment, Finding, diagnose, format_findings
    from netlab.doctor.probes import MachineProbe

    findings: list[Finding]
    args.after_interrupt = "" if args.machine else UP_LAB_KEPT
    if args.machine:
        if args.lab is not None:
            raise UsageError("netlab doctor: give --machine or --lab ID, not both")
        if not (args.backend and args.address):
            raise UsageError("netlab doctor --machine needs --backend ADDRESS and --address ADDRESS")
        backend, ports = _backend(args.backend)
        deployment = Deployment(
            host=MachineProbe(),
            backend=None,
            backend_address=backend,
            host_address=args.address,
            clients=args.client or [],
            reply_mode=args.reply,
            backend_ports=ports,
        )
        findings = diagnose(deployment)
    else:
        if args.backend or args.address or args.client:
            raise UsageError("netlab doctor: --backend, --address and --client go with --machine")
        from netlab.doctor.lab import diagnose_lab
        from netlab.lab.detached import attach

        require_privileges()
        with attach(args.lab) as (lab, topology):
            findings = diagnose_lab(lab, topology, reply_mode=args.reply)
    if args.json:
        print_json([finding.__dict__ for finding in findings])
    else:
        print(format_findings(findings))
        print(orphans_note())
    return 0 if all(finding.ok for finding in findings) else EX_FAILED


def orphans_note() -> str:
    """A line naming the `nl-` namespaces no lab record names (not a deployment fault: nothing fails)."""
    from netlab.lab import registry

    unrecorded = registry.orphans()
    if not unrecorded:
        return "[note] no unrecorded nl- namespaces"
    return (
        f"[note] {len(unrecorded)} nl- namespace(s) no lab record names: {' '.join(unrecorded)}"
        " (`netlab ls` lists them; `netlab down --orphans NAME...` removes them)"
    )


def _backend(text: str) -> tuple[str, list[int]]:
    """--backend ADDRESS or ADDRESS:PORT ([V6]:PORT): the address, and the port it answers from if given."""
    from netlab.addresses import parse_endpoint

    if text.startswith("[") or text.count(":") == 1:
        address, port = parse_endpoint(text)
        return address, [port]
    return text, []


def register(commands: Commands) -> None:
    """Add doctor."""
    doctor = commands.add_parser("doctor", help="check what a transparent forward and its replies need")
    add_lab_option(doctor)
    doctor.add_argument("--machine", action="store_true", help="check this machine (its own namespace)")
    doctor.add_argument(
        "--backend",
        metavar="ADDRESS[:PORT]",
        help="with --machine: the backend's address (and, for relay mode, the port it answers from)",
    )
    doctor.add_argument("--address", metavar="ADDRESS", help="with --machine: the address clients send to")
    doctor.add_argument("--client", action="append", metavar="ADDRESS", help="with --machine: a client")
    doctor.add_argument(
        "--reply",
        choices=["direct", "relay"],
        help="the forwarder's reply mode to check for (default: as the running forwarder's --reply says)",
    )
    doctor.add_argument("--json", action="store_true", help="the findings as JSON")
    doctor.set_defaults(handler=cmd_doctor, after_interrupt=UP_LAB_KEPT)
