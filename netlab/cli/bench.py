"""`netlab bench`: the forwarder's speed as ratios to kernel DNAT, to its peers nginx and go-mmproxy, and to
the C original's algorithm; `--plot FILE.svg` draws the ratios (of this run, or `--from` a saved `--json`)."""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from netlab.cli.common import EX_UNAVAILABLE, OWN_LAB_REMOVED, Commands, require_privileges
from netlab.errors import UsageError


def _plot(document: dict[str, Any], path: Path) -> int:
    from netlab.bench.plot import PlotUnavailableError, plot_ratios

    try:
        plot_ratios(document, path)
    except PlotUnavailableError as error:
        print(f"netlab: {error}", file=sys.stderr)
        return EX_UNAVAILABLE
    print(f"the ratios are drawn in {path}", file=sys.stderr)
    return 0


def _saved(path: Path) -> dict[str, Any]:
    """A document `netlab bench --json` wrote."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--from {str(path)!r}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"--from {str(path)!r}: not the JSON of `netlab bench --json`: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("cases"), list):
        raise UsageError(f"--from {str(path)!r}: not the JSON of `netlab bench --json` (no 'cases' list)")
    return document


def cmd_bench(args: argparse.Namespace) -> int:
    from netlab.bench.fixed_rate import parse_rates
    from netlab.bench.report import QUICK_NOTE
    from netlab.bench.run import Settings, parse_contenders, run_bench

    if args.from_file is not None and args.plot is None:
        raise UsageError("--from FILE.json goes with --plot FILE.svg (it draws a saved run)")
    if args.plot is not None:
        from netlab.bench.plot import FORMATS

        if Path(args.plot).suffix not in FORMATS:  # refused before minutes of measuring, not after
            raise UsageError(f"--plot {args.plot!r}: expected a file ending in one of {', '.join(FORMATS)}")
    if args.from_file is not None:
        return _plot(_saved(Path(args.from_file)), Path(args.plot))
    if args.runs is not None and args.runs < 1:
        raise UsageError(f"--runs {args.runs}: expected 1 or more")
    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        raise UsageError(f"--duration {args.duration}: expected a finite number of seconds above 0")
    compared: list[str] = []
    if args.compare_with is not None:
        from netlab.bench.contenders import add_checkout

        checkout = Path(args.compare_with).resolve()
        compared = add_checkout(checkout, checkout.name)
    contenders = parse_contenders(args.contenders) if args.contenders is not None else []  # empty: all
    if contenders and compared:
        contenders += [name for name in compared if name not in contenders]
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
    plotted: list[int] = []

    def plot(document: dict[str, Any]) -> None:
        plotted.append(_plot(document, Path(args.plot)))

    code = run_bench(settings, as_json=args.json, plot=plot if args.plot is not None else None)
    if not args.full and not args.json:
        print(QUICK_NOTE)
    return code or (plotted[0] if plotted else 0)


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
        "forwarder-gso, forwarder-sockets, forwarder-checksum, forwarder-relay, forwarder-tproxy, "
        "forwarder-single, "
        "forwarder-proxy-v2, nginx, go-mmproxy "
        "(default: all; missing packages are skipped)",
    )
    bench.add_argument(
        "--compare-with",
        metavar="CHECKOUT",
        help="also race the forwarder of another checkout (e.g. `git worktree add ../old v0.1`), as "
        "forwarder@NAME and forwarder-relay@NAME (NAME: the directory's name)",
    )
    bench.add_argument(
        "--echo-rates",
        metavar="RATE,...",
        help="offered datagrams/s of the fixed-rate echo runs (loss and CPU per relayed reply), "
        "e.g. 50k,100k (--full: 50k,100k,200k; --quick: none)",
    )
    bench.add_argument(
        "--plot",
        metavar="FILE.svg",
        help="draw the ratios into FILE (.svg, .png or .pdf; needs the `plot` extra, matplotlib)",
    )
    bench.add_argument(
        "--from",
        dest="from_file",
        metavar="FILE.json",
        help="with --plot: draw a saved `netlab bench --json` run instead of measuring (no root needed)",
    )
    bench.set_defaults(handler=cmd_bench, after_interrupt=OWN_LAB_REMOVED)
