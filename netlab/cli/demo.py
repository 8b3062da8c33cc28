"""`netlab demo`: the seed deployment end to end, as a table (`./dev demo`; netlab.scenario.demo)."""

import argparse

from netlab.cli.common import OWN_LAB_REMOVED, Commands, require_privileges


def cmd_demo(args: argparse.Namespace) -> int:
    from netlab.scenario.demo import run_demo  # imports pyroute2 only when needed

    require_privileges()
    return run_demo()


def register(commands: Commands) -> None:
    """Add demo."""
    demo = commands.add_parser("demo", help="run the seed deployment end to end and show what happened")
    demo.set_defaults(handler=cmd_demo, after_interrupt=OWN_LAB_REMOVED)
