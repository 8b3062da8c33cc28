"""`netlab bench`: the forwarder's speed as ratios measured in one run, on one topology.

    client (sender) 198.51.100.10 --- 198.51.100.1 [host: contender] 192.0.2.1 --- 192.0.2.2 backend

Contenders take turns on the host, interleaved and repeated: the kernel's nftables DNAT (with and without
RPS), the C original's per-datagram algorithm in Python (netlab.programs.per_datagram), the forwarder, and
the peers nginx and go-mmproxy (skipped, with a line saying so, where their package is missing). Every
userspace contender is pinned to CPU 1. The load comes from netlab.programs.blaster (raw socket + sendmmsg,
pinned to CPU 0); its solo rate is measured and reported.
Delivered datagrams are counted by an nftables counter at the backend (kernel, not a userspace receiver);
in an echo case the backend's kernel answers each one and the client's counter counts the replies, for
the contenders that relay replies.
"""

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from netlab.bench.contenders import CONTENDERS
from netlab.bench.fixed_rate import echo_ceilings, fixed_rate_table, summarize_fixed_rate
from netlab.bench.lab import BenchLab, Case, Run
from netlab.bench.memory import MEASURED_PATHS, FlowMemory, measure_flow_memory
from netlab.bench.report import json_document, memory_line, progress_line, text_report, thousands
from netlab.bench.stats import summarize
from netlab.errors import UsageError
from netlab.lab.lab import Lab


@dataclass
class Settings:
    """How much to measure: the quick mode is a smoke test of seconds, the full mode gives the figures."""

    cases: list[Case] = field(default_factory=lambda: [Case(64, 1), Case(64, 1000), Case(64, 1, echo=True)])
    runs: int = 1
    duration: float = 0.5
    contenders: list[str] = field(default_factory=list)
    loss_tests: bool = False
    memory_flows: int = 0  # measure what this many open flows cost on each send path raced (0: skip)
    # The fixed offered loads (datagrams/s) of the echo cases: loss and CPU per relayed reply at equal load.
    echo_rates: list[float] = field(default_factory=list)

    @classmethod
    def quick(cls) -> "Settings":
        return cls()

    @classmethod
    def full(cls) -> "Settings":
        cases = [Case(64, 1), Case(64, 1000), Case(1200, 1), Case(1200, 1000)]
        cases += [Case(64, 1, echo=True), Case(64, 1000, echo=True)]
        rates = [
            50_000.0,
            100_000.0,
            200_000.0,
        ]  # 200k: above the userspace contenders, to find DNAT's ceiling
        return cls(cases=cases, runs=3, duration=2.0, loss_tests=True, memory_flows=50_000, echo_rates=rates)


def parse_contenders(text: str) -> list[str]:
    """`--contenders a,b`: known names, in the order given, each once; UsageError naming a bad value."""
    names = [name.strip() for name in text.split(",")]
    for name in names:
        if name not in CONTENDERS:
            raise UsageError(
                f"unknown contender {name!r}: expected a comma-separated list of {', '.join(CONTENDERS)}"
            )
    return list(dict.fromkeys(names))


def available(names: list[str], progress: TextIO) -> tuple[list[str], dict[str, str]]:
    """The contenders of `names` that can run here, and why each other one is skipped (said on `progress`)."""
    skipped = {name: reason for name in names if (reason := CONTENDERS[name].missing()) is not None}
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", file=progress, flush=True)
    return [name for name in names if name not in skipped], skipped


def run_bench(
    settings: Settings,
    out: TextIO = sys.stdout,
    progress: TextIO = sys.stderr,
    as_json: bool = False,
    plot: Callable[[dict[str, Any]], object] | None = None,
) -> int:
    """Run every contender on every case, interleaved and repeated; print the table (or JSON), and hand
    the JSON document to `plot` when given (`netlab bench --plot`)."""
    unknown = [name for name in settings.contenders if name not in CONTENDERS]
    if unknown:
        raise UsageError(f"unknown contender {unknown[0]!r}: expected one of {', '.join(CONTENDERS)}")
    names, skipped = available(settings.contenders or list(CONTENDERS), progress)
    runs: list[Run] = []
    loss_runs: list[Run] = []
    plan = [(case, name) for case in settings.cases for name in names if CONTENDERS[name].runs(case)]
    total = settings.runs * len(plan)
    with Lab(description="netlab bench") as lab:
        bench = BenchLab(lab)
        solo = {
            str(case): bench.sender_solo_rate(case, settings.duration)
            for case in settings.cases
            if not case.echo
        }
        print(f"sender alone: {', '.join(f'{k} {thousands(v)}/s' for k, v in solo.items())}", file=progress)
        done = 0
        for repetition in range(settings.runs):
            for case, name in plan:
                done += 1
                run = bench.measure(CONTENDERS[name], case, settings.duration)
                runs.append(run)
                print(progress_line(done, total, repetition + 1, run), file=progress, flush=True)
        rate_runs = measure_fixed_rates(bench, settings, names, progress)
        summaries = summarize(runs)
        if settings.loss_tests and "forwarder" in names:
            for summary in summaries:
                if summary.contender != "forwarder" or summary.case.payload != 64 or summary.case.echo:
                    continue
                for rate in (0.8 * summary.median_delivered_per_s, 100_000.0):
                    run = bench.measure(CONTENDERS["forwarder"], summary.case, settings.duration, rate=rate)
                    loss_runs.append(run)
                    print(
                        f"[loss] {summary.case!s:<17} forwarder at {thousands(rate)}/s offered: "
                        f"loss {run.loss:.3%} ({run.offered - run.delivered} of {run.offered})",
                        file=progress,
                        flush=True,
                    )
        memory: list[FlowMemory] = []
        for name in MEASURED_PATHS if settings.memory_flows else ():
            if name in names:  # each send path raced is measured
                memory.append(measure_flow_memory(bench, settings.memory_flows, name))
                print(f"[memory] {memory_line(memory[-1])}", file=progress, flush=True)
    rated = summarize_fixed_rate(rate_runs)
    ceilings = echo_ceilings(summaries, rated)
    document = json_document(summaries, solo, runs, loss_runs, memory, skipped=skipped)
    document["fixed_rate_echo"] = [asdict(summary) for summary in rated]
    document["echo_ceilings"] = [
        {"case": case, "contender": name, "replies_per_s": rate} for (case, name), rate in ceilings.items()
    ]
    if plot is not None:
        plot(document)
    if as_json:
        print(json.dumps(document, indent=2), file=out)
    else:
        print(text_report(summaries, solo, loss_runs, memory, skipped), file=out)
        if rated:
            print(fixed_rate_table(rated, ceilings), file=out)
    return 0


def measure_fixed_rates(bench: BenchLab, settings: Settings, names: list[str], progress: TextIO) -> list[Run]:
    """Every echo case at each of `settings.echo_rates` offered, for each contender that relays replies,
    interleaved and repeated as the flat-out runs: loss and CPU per relayed reply at equal load."""
    plan = [
        (case, rate, name)
        for case in settings.cases
        if case.echo
        for rate in settings.echo_rates
        for name in names
        if CONTENDERS[name].relays_replies
    ]
    runs: list[Run] = []
    for repetition in range(settings.runs if plan else 0):
        for done, (case, rate, name) in enumerate(plan, 1):
            run = bench.measure(CONTENDERS[name], case, settings.duration, rate=rate)
            runs.append(run)
            print(
                f"[fixed-rate {done + repetition * len(plan)}/{settings.runs * len(plan)}] {case!s:<24} "
                f"{thousands(rate)}/s offered {name:<18} {thousands(run.delivered_per_second)}/s replies, "
                f"loss {run.loss:.2%}, CPU us/reply {run.cpu_us_per_datagram:.2f} machine, "
                f"{run.process_us_per_datagram:.2f} own",
                file=progress,
                flush=True,
            )
    return runs
