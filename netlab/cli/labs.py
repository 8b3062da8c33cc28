"""`netlab up`, `down`, `ls`, `exec` and `shell`: labs that outlive the command, and stepping into a node."""

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from netlab.cli.common import (
    EX_NOT_FOUND,
    OWN_LAB_REMOVED,
    UP_LAB_KEPT,
    Commands,
    add_lab_option,
    print_json,
    require_privileges,
)
from netlab.errors import UnknownNodeError, UsageError

if TYPE_CHECKING:
    from netlab.lab.registry import LabRecord


def steerings_of(record: "LabRecord") -> list[str]:
    """The tproxy steerings a lab made by `netlab up` declares (its topology copy), one line each; [] for
    other labs, whose topology only their owner knows. They live in the lab's namespaces and go with them."""
    from netlab.errors import NetlabError
    from netlab.lab import registry
    from netlab.topology.file import load_topology_file

    path = registry.topology_file(record.lab_id)
    if not path.is_file():
        return []
    try:
        return [steering.describe() for steering in load_topology_file(path).steerings]
    except NetlabError:
        return []


def cmd_ls(args: argparse.Namespace) -> int:
    from netlab.lab import registry

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
                "tproxy": steerings_of(record),
            }
        )
    # Namespaces named like a lab's but in no record: listed, never removed unless `down --orphans` asks.
    unrecorded = registry.orphans()
    if args.json:
        print_json(rows + [{"id": None, "state": "unrecorded", "namespaces": [name]} for name in unrecorded])
        return 0
    if not rows and not unrecorded:
        print("no labs")
    for row in rows:
        print(f"{row['id']}  {row['state']:<5}  pid {row['owner_pid']:<7} {row['description']}")
        print(f"        {' '.join(row['namespaces'])}")
        for steering in row["tproxy"]:
            print(f"        tproxy {steering}")
    for name in unrecorded:
        print(f"{name}  unrecorded (no lab record names it; `netlab down --orphans {name}` removes it)")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from netlab.lab.detached import load_for_up, up

    loaded = load_for_up(args.file)  # a bad argument is reported before the privilege check, as in `run`
    require_privileges()
    lab_id = up(loaded)
    if args.json:
        print_json({"id": lab_id})
    else:
        print(lab_id)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from netlab.lab import detached, registry

    chosen = [bool(args.name), args.all, args.stale, args.orphans is not None]
    if sum(chosen) != 1:
        raise UsageError("netlab down: give one of NAME, --all, --stale or --orphans")
    require_privileges()
    removed: list[str] = []
    if args.name:
        removed = detached.down(args.name)
    elif args.orphans is not None:
        removed = registry.remove_orphans(args.orphans or None)
    else:
        if args.all:
            for record in registry.load_records():
                if record.detached:
                    removed += detached.down(record.lab_id)
        removed += registry.reap_stale()
    print(f"removed {len(removed)} namespaces" + (f": {' '.join(removed)}" if removed else ""))
    return 0


def node_namespace(lab_id: str | None, node: str) -> str:
    """The namespace of `node` in the lab `lab_id` (the one lab up when None)."""
    from netlab.lab.detached import find, topology_of
    from netlab.lab.names import namespace_name

    record = find(lab_id)
    nodes = topology_of(record).nodes
    if node not in nodes:
        raise UnknownNodeError(f"lab {record.lab_id} has no node {node!r}; known nodes: {sorted(nodes)}")
    return namespace_name(record.lab_id, node)


def _run_in_node(namespace: str, node: str, argv: Sequence[str]) -> int:
    """Run `argv` in the node's network namespace with this terminal's stdin/stdout/stderr."""
    from netlab.lab import netns

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
    require_privileges()
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("netlab exec: give a command after the node: netlab exec NODE -- CMD...")
    return _run_in_node(node_namespace(args.lab, args.node), args.node, command)


def cmd_shell(args: argparse.Namespace) -> int:
    require_privileges()
    shell = os.environ.get("SHELL") or "/bin/sh"
    return _run_in_node(node_namespace(args.lab, args.node), args.node, [shell])


def register(commands: Commands) -> None:
    """Add up, down, ls, exec and shell."""
    up = commands.add_parser("up", help="build a lab that stays until `netlab down`; prints its id")
    up.add_argument("file", metavar="FILE", help="a topology file, or a shipped name (seed, dual-stack, ...)")
    up.add_argument("--json", action="store_true", help='print {"id": ID}')
    up.set_defaults(handler=cmd_up, after_interrupt=OWN_LAB_REMOVED)
    down = commands.add_parser("down", help="remove a lab, every lab made by `up`, or stale labs")
    down.add_argument("name", nargs="?", metavar="NAME", help="the lab id to remove")
    down.add_argument("--all", action="store_true", help="every lab made by `netlab up`, and stale ones")
    down.add_argument("--stale", action="store_true", help="remove labs whose owner process is gone")
    down.add_argument(
        "--orphans",
        nargs="*",
        metavar="NAMESPACE",
        help="remove `nl-` namespaces no lab record names (`netlab ls` lists them): these, or all of them",
    )
    down.set_defaults(handler=cmd_down, after_interrupt="")
    ls = commands.add_parser("ls", help="list labs on this machine, and nl- namespaces no lab record names")
    ls.add_argument("--json", action="store_true", help="a JSON list of labs")
    ls.set_defaults(handler=cmd_ls, after_interrupt="")

    exec_ = commands.add_parser("exec", help="run a command in a node; exits with its code")
    add_lab_option(exec_)
    exec_.add_argument("node", metavar="NODE")
    exec_.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    exec_.set_defaults(handler=cmd_exec, after_interrupt=UP_LAB_KEPT)
    shell = commands.add_parser("shell", help="an interactive $SHELL in a node")
    add_lab_option(shell)
    shell.add_argument("node", metavar="NODE")
    shell.set_defaults(handler=cmd_shell, after_interrupt=UP_LAB_KEPT)
