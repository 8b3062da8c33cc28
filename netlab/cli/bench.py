"""`netlab bench`: the forwarder's speed as ratios to kernel DNAT, to its peers nginx and go-mmproxy, and to
the C original's algorithm."""

import argparse

from netlab.cli.common import OWN_LAB_REMOVED, Commands, require_privileges


def cmd_bench(args: argparse.Namespace) -> int:
    from netlab.bench.fixed_rate import parse_rates
    from netlab.bench.run import Settings, parse_contenders, run_bench

    contenders = parse_contenders(args.contenders) if args.contenders is not None else []  # empty: all
    rates = parse_rates(args.echo_rates) if args.echo_rates is not None else None
    require_privileges()
    settings = Settings.full() if args.full else Settings.quick()
    if args.runs is not None:
        settings.runs = args.runs
    if args.duration is not None:
        settings.duration = args.duration
    settings.contenders = contenders
    if rates is not None:
        settings.echo_rates = rates
    return run_bench(settings, as_json=args.json)


def register(commands: Commands) -> None:
    """Add bench."""
    bench = commands.add_parser(
        "bench", help="race the forwarder against kernel DNAT, nginx, go-mmproxy and the C algorithm"
    )
    mode = bench.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a smoke run of seconds (the default)")
    mode.add_argument(
        "--full", action="store_true", help="6 cases (2 of them echoed) x 3 interleaved runs, plus loss tests"
    )
    bench.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    bench.add_argument("--runs", type=int, help="repetitions of every case and contender")
    bench.add_argument("--duration", type=float, help="seconds of traffic per run")
    bench.add_argument(
        "--contenders",
        metavar="NAME,...",
        help="measure only these, comma-separated: kernel-dnat+rps, kernel-dnat, per-datagram, forwarder, "
        "forwarder-gso, forwarder-relay, forwarder-single, forwarder-proxy-v2, nginx, go-mmproxy "
        "(default: all; missing packages are skipped)",
    )
    bench.add_argument(
        "--echo-rates",
        metavar="RATE,...",
        help="offered datagrams/s of the fixed-rate echo runs (loss and CPU per relayed reply), "
        "e.g. 50k,100k (--full: 50k,100k,200k; --quick: none)",
    )
    bench.set_defaults(handler=cmd_bench, after_interrupt=OWN_LAB_REMOVED)
