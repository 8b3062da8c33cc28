"""The `netlab` command: labs you can step into (up, down, ls, exec, shell, send, sniff), scenarios (run),
the doctor, the demo and the benchmark.

Exit codes (sysexits(3)): 0 success, 1 a check or scenario failed, 64 usage, 66 no such topology or
scenario file, 68 no such lab or node, 77 missing privilege, 78 an invalid topology or scenario file,
127 the command given to `exec` does not exist, 130 interrupted. `exec` and `shell` exit with the code of
the command they ran.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

from netlab import registry
from netlab.errors import (
    FixtureNotFoundError,
    MissingPrivilegeError,
    NetlabError,
    ScenarioError,
    TopologyError,
    UnknownLabError,
    UnknownNodeError,
    UsageError,
)
from netlab.privileges import missing_reason

EX_FAILED = 1
EX_NOT_FOUND = 127
EX_INTERRUPTED = 130
# Most specific first: UnknownNodeError is a TopologyError.
EXIT_CODES: list[tuple[type[NetlabError], int]] = [
    (UsageError, os.EX_USAGE),
    (FixtureNotFoundError, os.EX_NOINPUT),
    (UnknownLabError, os.EX_NOHOST),
    (UnknownNodeError, os.EX_NOHOST),
    (MissingPrivilegeError, os.EX_NOPERM),
    (TopologyError, os.EX_CONFIG),
    (ScenarioError, os.EX_CONFIG),
]


def exit_code_of(error: NetlabError) -> int:
    """The documented exit code for `error` (1 for anything without its own)."""
    return next((code for kind, code in EXIT_CODES if isinstance(error, kind)), EX_FAILED)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"netlab: {message}", file=sys.stderr)
        raise SystemExit(os.EX_USAGE)


def _require_privileges() -> None:
    reason = missing_reason()
    if reason is not None:
        raise MissingPrivilegeError(reason)


_MAIN_PID = os.getpid()


def _sigterm_as_interrupt(signum: int, frame: FrameType | None) -> None:
    # pyroute2 forks helpers (to open netlink sockets inside a namespace) and ends them with SIGTERM; they
    # inherit this handler, and must die rather than unwind through the CLI as if they were the command.
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def cmd_demo(args: argparse.Namespace) -> int:
    from netlab.demo import run_demo  # imports pyroute2 only when needed

    _require_privileges()
    return run_demo(reply=args.reply)


def cmd_bench(args: argparse.Namespace) -> int:
    from netlab.bench import CONTENDERS, Settings, run_bench

    _require_privileges()
    settings = Settings.full() if args.full else Settings.quick()
    if args.runs is not None:
        settings.runs = args.runs
    if args.duration is not None:
        settings.duration = args.duration
    settings.contenders = args.contender or list(CONTENDERS)
    return run_bench(settings, as_json=args.json)


def cmd_doctor(args: argparse.Namespace) -> int:
    from netlab.doctor import Deployment, Finding, MachineProbe, diagnose, format_findings

    findings: list[Finding]
    if args.machine:
        if args.lab is not None:
            raise UsageError("netlab doctor: give --machine or --lab ID, not both")
        if not (args.backend and args.address):
            raise UsageError("netlab doctor --machine needs --backend ADDRESS and --address ADDRESS")
        deployment = Deployment(
            host=MachineProbe(),
            backend=None,
            backend_address=args.backend,
            host_address=args.address,
            clients=args.client or [],
            reply=args.reply,
            backend_ports=args.backend_port or [],
        )
        findings = diagnose(deployment)
    else:
        if args.backend or args.address or args.client:
            raise UsageError("netlab doctor: --backend, --address and --client go with --machine")
        from netlab.detached import attach
        from netlab.doctor_lab import diagnose_lab

        _require_privileges()
        with attach(args.lab) as (lab, topology):
            findings = diagnose_lab(lab, topology, args.reply, args.backend_port)
    if args.json:
        _print_json([finding.__dict__ for finding in findings])
    else:
        print(format_findings(findings))
    return 0 if all(finding.ok for finding in findings) else EX_FAILED


def cmd_ls(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for record in registry.load_records():
        state = "up" if record.detached else ("live" if record.owner_alive() else "stale")
        rows.append(
            {
                "id": record.lab_id,
                "state": state,
                "owner_pid": record.owner_pid,
                "namespaces": record.namespaces,
                "created": record.created,
                "description": record.description,
            }
        )
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no labs")
    for row in rows:
        print(f"{row['id']}  {row['state']:<5}  pid {row['owner_pid']:<7} {row['description']}")
        print(f"        {' '.join(row['namespaces'])}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from netlab.detached import up

    _require_privileges()
    lab_id = up(args.file)
    if args.json:
        _print_json({"id": lab_id})
    else:
        print(lab_id)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from netlab import detached

    _require_privileges()
    chosen = [bool(args.name), args.all, args.stale]
    if sum(chosen) != 1:
        raise UsageError("netlab down: give one of NAME, --all or --stale")
    removed: list[str] = []
    if args.name:
        removed = detached.down(args.name)
    else:
        if args.all:
            for record in registry.load_records():
                if record.detached:
                    removed += detached.down(record.lab_id)
        removed += registry.reap_stale()
    print(f"removed {len(removed)} namespaces" + (f": {' '.join(removed)}" if removed else ""))
    return 0


def _node_namespace(lab_id: str | None, node: str) -> str:
    from netlab.detached import find, topology_of
    from netlab.names import namespace_name

    record = find(lab_id)
    nodes = topology_of(record).nodes
    if node not in nodes:
        raise UnknownNodeError(f"lab {record.lab_id} has no node {node!r}; known nodes: {sorted(nodes)}")
    return namespace_name(record.lab_id, node)


def _run_in_node(namespace: str, node: str, argv: Sequence[str]) -> int:
    """Run `argv` in the node's network namespace with this terminal's stdin/stdout/stderr."""
    from netlab import netns

    env = dict(os.environ, NETLAB_NODE=node, NETLAB_NAMESPACE=namespace)
    fd = os.open(netns.netns_path(namespace), os.O_RDONLY | os.O_CLOEXEC)
    try:
        completed = subprocess.run(
            list(argv),
            env=env,
            check=False,
            preexec_fn=lambda: netns.setns(fd),
        )
    except FileNotFoundError:
        print(f"netlab: command {argv[0]!r} not found", file=sys.stderr)
        return EX_NOT_FOUND
    finally:
        os.close(fd)
    return completed.returncode if completed.returncode >= 0 else 128 - completed.returncode


def cmd_exec(args: argparse.Namespace) -> int:
    _require_privileges()
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("netlab exec: give a command after the node: netlab exec NODE -- CMD...")
    return _run_in_node(_node_namespace(args.lab, args.node), args.node, command)


def cmd_shell(args: argparse.Namespace) -> int:
    _require_privileges()
    shell = os.environ.get("SHELL") or "/bin/sh"
    return _run_in_node(_node_namespace(args.lab, args.node), args.node, [shell])


def cmd_send(args: argparse.Namespace) -> int:
    import ipaddress

    from netlab.activation import split_listen
    from netlab.detached import attach
    from netlab.lab import make_payload

    _require_privileges()
    try:
        dst, dport = split_listen(args.to)
        version = ipaddress.ip_address(dst).version
    except ValueError:
        raise UsageError(f"netlab send: --to {args.to!r}: expected ADDRESS:PORT or [V6]:PORT") from None
    payload = make_payload(args.size) if args.size is not None else args.payload.encode()
    with attach(args.lab) as (lab, topology):
        node = lab[args.node]
        src = args.src
        if src is None:
            own = [a for a in topology.addresses_of(args.node) if ipaddress.ip_address(a).version == version]
            if not own:
                raise UsageError(f"node {args.node!r} has no IPv{version} address: give --src")
            src = own[0]
        node.send_udp(
            src=src,
            dst=dst,
            sport=args.sport,
            dport=dport,
            payload=payload,
            count=args.count,
            fragment_size=args.fragment_size,
        )
    sent = {"from": args.node, "src": src, "sport": args.sport, "to": args.to, "size": len(payload)}
    sent["count"] = args.count
    if args.json:
        _print_json(sent)
    else:
        print(f"sent {args.count} x {len(payload)} bytes from {args.node} as {src}:{args.sport} to {args.to}")
    return 0


def cmd_sniff(args: argparse.Namespace) -> int:
    from netlab.sniff import Sniffer

    _require_privileges()
    namespace = _node_namespace(args.lab, args.node)
    seen = 0
    with Sniffer(namespace) as sniffer:
        print(f"sniffing UDP on {args.node} ({namespace}); Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            for datagram in sniffer.datagrams(args.count, args.timeout):
                seen += 1
                text = json.dumps(datagram.to_json(), sort_keys=True) if args.json else datagram.line()
                print(text, flush=True)
        except KeyboardInterrupt:
            pass
    print(f"{seen} datagrams", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from netlab.scenario import load_scenario
    from netlab.scenario_run import run_scenario_file

    scenario = load_scenario(args.scenario)  # a bad file is reported before the privilege check
    _require_privileges()
    result = run_scenario_file(scenario, runs=args.runs)
    if args.json:
        _print_json(result.to_json())
    else:
        print(result.report())
    return 0 if result.passed else EX_FAILED


def _add_lab_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", metavar="ID", help="the lab (see `netlab ls`); optional with one lab up")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="netlab", description="A network lab for the transparent UDP forwarder.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    demo = commands.add_parser("demo", help="run the seed deployment end to end and show what happened")
    demo.add_argument(
        "--reply",
        choices=["direct", "relay"],
        default="direct",
        help="the forwarder's reply mode: direct (the host rewrites the replies' source) or relay (the "
        "backend answers on other ports, the forwarder relays the replies)",
    )
    demo.set_defaults(handler=cmd_demo)
    bench = commands.add_parser("bench", help="measure the forwarder against kernel DNAT and the C algorithm")
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a smoke run of seconds (the default)")
    mode.add_argument("--full", action="store_true", help="4 cases x 3 interleaved runs, plus loss tests")
    bench.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    bench.add_argument("--runs", type=int, help="repetitions of every case and contender")
    bench.add_argument("--duration", type=float, help="seconds of traffic per run")
    bench.add_argument(
        "--contender",
        action="append",
        choices=[
            "kernel-dnat+rps",
            "kernel-dnat",
            "per-datagram",
            "forwarder",
            "forwarder-single",
            "forwarder-relay",
        ],
        help="measure only these (repeatable); default all",
    )
    bench.set_defaults(handler=cmd_bench)

    up = commands.add_parser("up", help="build a lab that stays until `netlab down`; prints its id")
    up.add_argument("file", metavar="FILE", help="a topology file, or a shipped name (seed, dual-stack, ...)")
    up.add_argument("--json", action="store_true", help='print {"id": ID}')
    up.set_defaults(handler=cmd_up)
    down = commands.add_parser("down", help="remove a lab, every lab made by `up`, or stale labs")
    down.add_argument("name", nargs="?", metavar="NAME", help="the lab id to remove")
    down.add_argument("--all", action="store_true", help="every lab made by `netlab up`, and stale ones")
    down.add_argument("--stale", action="store_true", help="remove labs whose owner process is gone")
    down.set_defaults(handler=cmd_down)
    ls = commands.add_parser("ls", help="list labs on this machine")
    ls.add_argument("--json", action="store_true", help="a JSON list of labs")
    ls.set_defaults(handler=cmd_ls)

    exec_ = commands.add_parser("exec", help="run a command in a node; exits with its code")
    _add_lab_option(exec_)
    exec_.add_argument("node", metavar="NODE")
    exec_.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    exec_.set_defaults(handler=cmd_exec)
    shell = commands.add_parser("shell", help="an interactive $SHELL in a node")
    _add_lab_option(shell)
    shell.add_argument("node", metavar="NODE")
    shell.set_defaults(handler=cmd_shell)

    send = commands.add_parser("send", help="craft UDP datagrams (any source, also spoofed) from a node")
    _add_lab_option(send)
    send.add_argument("--from", dest="node", required=True, metavar="NODE", help="the node that sends")
    send.add_argument("--to", required=True, metavar="ADDR:PORT", help="destination, [v6]:port for IPv6")
    send.add_argument("--src", metavar="ADDRESS", help="source address (spoofed); default the node's own")
    send.add_argument("--sport", type=int, default=4242, metavar="PORT", help="source port (default 4242)")
    body = send.add_mutually_exclusive_group()
    body.add_argument("--payload", default="", metavar="TEXT", help="the payload (UTF-8)")
    body.add_argument("--size", type=int, metavar="BYTES", help="a patterned payload of this many bytes")
    send.add_argument("--count", type=int, default=1, metavar="N", help="how many times (default 1)")
    send.add_argument("--fragment-size", type=int, default=0, metavar="BYTES", help="force fragments")
    send.add_argument("--json", action="store_true", help="describe what was sent as JSON")
    send.set_defaults(handler=cmd_send)
    sniff = commands.add_parser("sniff", help="print UDP datagrams seen on a node's interfaces")
    _add_lab_option(sniff)
    sniff.add_argument("node", metavar="NODE")
    sniff.add_argument("--count", type=int, metavar="N", help="stop after N datagrams")
    sniff.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after this long")
    sniff.add_argument("--json", action="store_true", help="one JSON object per line")
    sniff.set_defaults(handler=cmd_sniff)

    run = commands.add_parser("run", help="run a scenario file; exit 0 when every expectation holds")
    run.add_argument("scenario", metavar="SCENARIO", help="a scenario file, or a shipped scenario's name")
    run.add_argument("--runs", metavar="DIR", help="where a failed run's logs and captures are kept")
    run.add_argument("--json", action="store_true", help="the result as JSON")
    run.set_defaults(handler=cmd_run)

    doctor = commands.add_parser("doctor", help="check what a transparent forward and its replies need")
    _add_lab_option(doctor)
    doctor.add_argument("--machine", action="store_true", help="check this machine (its own namespace)")
    doctor.add_argument("--backend", metavar="ADDRESS", help="with --machine: the backend's address")
    doctor.add_argument("--address", metavar="ADDRESS", help="with --machine: the address clients send to")
    doctor.add_argument("--client", action="append", metavar="ADDRESS", help="with --machine: a client")
    doctor.add_argument(
        "--reply",
        choices=["direct", "relay"],
        help="the forwarder's reply mode to check for (default: as the running forwarder says, else direct)",
    )
    doctor.add_argument(
        "--backend-port",
        action="append",
        type=int,
        metavar="PORT",
        help="relay mode: a port the backend answers from (default: the running forwarder's destinations)",
    )
    doctor.add_argument("--json", action="store_true", help="the findings as JSON")
    doctor.set_defaults(handler=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global _MAIN_PID
    args = build_parser().parse_args(argv)
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("netlab: interrupted; the lab was removed", file=sys.stderr)
        return EX_INTERRUPTED
    except NetlabError as error:
        print(f"netlab: {error}", file=sys.stderr)
        return exit_code_of(error)
