"""`netlab demo [--reply direct|relay]`: the seed deployment end to end, as a table (`./dev demo`;
netlab.scenario.demo)."""

import argparse

from netlab.cli.common import OWN_LAB_REMOVED, Commands, require_privileges


def cmd_demo(args: argparse.Namespace) -> int:
    from netlab.scenario.demo import run_demo  # imports pyroute2 only when needed

    require_privileges()
    return run_demo(reply=args.reply)


def register(commands: Commands) -> None:
    """Add demo."""
    demo = commands.add_parser("demo", help="run the seed deployment end to end and show what happened")
    demo.add_argument(
        "--reply",
        choices=["direct", "relay"],
        default="direct",
        help="the forwarder's reply mode: direct (the host rewrites the replies' source; the default) or "
        "relay (the forwarder relays them; the backend listens on other ports)",
    )
    demo.set_defaults(handler=cmd_demo, after_interrupt=OWN_LAB_REMOVED)
