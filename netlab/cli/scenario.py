"""`netlab run`: a scenario file in a lab of its own, one line per expectation, then the verdict."""

import argparse

from netlab.cli.common import EX_FAILED, OWN_LAB_REMOVED, Commands, print_json, require_privileges


def cmd_run(args: argparse.Namespace) -> int:
    from netlab.lab.runs import kept_runs_limit
    from netlab.scenario.load import load_scenario
    from netlab.scenario.run import run_scenario_file

    scenario = load_scenario(args.scenario)  # a bad file is reported before the privilege check
    kept_runs_limit()  # and a bad NETLAB_RUNS_KEEP
    require_privileges()
    result = run_scenario_file(scenario, runs=args.runs)
    if args.json:
        print_json(result.to_json())
    else:
        print(result.report())
    return 0 if result.passed else EX_FAILED


def register(commands: Commands) -> None:
    """Add run."""
    run = commands.add_parser("run", help="run a scenario file; exit 0 when every expectation holds")
    run.add_argument("scenario", metavar="SCENARIO", help="a scenario file, or a shipped scenario's name")
    run.add_argument("--runs", metavar="DIR", help="where a failed run's logs and captures are kept")
    run.add_argument("--json", action="store_true", help="the result as JSON")
    run.set_defaults(handler=cmd_run, after_interrupt=OWN_LAB_REMOVED)
