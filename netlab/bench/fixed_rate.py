"""The fixed-rate echo mode of `netlab bench`: every contender that relays replies gets the same offered
loads (e.g. 50k and 100k datagrams/s), and what is compared is loss and CPU per relayed reply.

Why: a sender that sends flat out with RPS floods CPU 1's backlog queue (net.core.netdev_max_backlog,
1000 packets, shared by every packet that CPU receives). In an echo case a reply crosses that queue three
more times (at the backend, back at the host, at the client) and loses the race against the flood: kernel
DNAT+RPS then relays fewer replies flat out than at a paced 100k/s (receive livelock). Paced runs measure
the path, not the flood; the best reply rate over the flat-out and the paced runs is each contender's
ceiling. Where the machine caps throughput, CPU per reply at the same offered load still compares
efficiency.
"""

import math
import statistics
from dataclasses import dataclass

from netlab.bench.lab import Run
from netlab.bench.stats import Summary
from netlab.errors import UsageError


@dataclass
class RateSummary:
    """Medians (and the spread of the contender's own CPU) of the runs of one contender at one offered
    rate in one echo case. CPU per relayed reply: all cores' busy time, CPU 1's, the contender's own."""

    contender: str
    case: str
    offered_per_s: float
    runs: int
    median_delivered_per_s: float
    median_loss: float
    max_loss: float
    median_cpu_us_per_reply: float
    median_core_us_per_reply: float
    median_process_us_per_reply: float
    min_process_us_per_reply: float
    max_process_us_per_reply: float


def parse_rates(text: str) -> list[float]:
    """`--echo-rates 50000,100000`: positive datagrams/s, in the order given, each once; UsageError
    naming a bad value."""
    rates: list[float] = []
    for item in (part.strip() for part in text.split(",")):
        number, scale = (item[:-1], 1000.0) if item.lower().endswith("k") else (item, 1.0)
        try:
            rate = float(number) * scale
        except ValueError:
            rate = float("nan")
        if not math.isfinite(rate) or rate <= 0:
            raise UsageError(f"bad echo rate {item!r}: expected positive datagrams/s, e.g. 50000 or 50k")
        if rate not in rates:
            rates.append(rate)
    return rates


def _median(values: list[float]) -> float:
    present = [value for value in values if not math.isnan(value)]
    return statistics.median(present) if present else float("nan")


def summarize_fixed_rate(runs: list[Run]) -> list[RateSummary]:
    """One RateSummary per echo case, offered rate and contender, in the order the runs were made."""
    groups: dict[tuple[str, float, str], list[Run]] = {}
    for run in runs:
        if run.rate_limit and run.case.echo:
            groups.setdefault((str(run.case), run.rate_limit, run.contender), []).append(run)
    summaries = []
    for (case, rate, name), mine in groups.items():
        own = [run.process_us_per_datagram for run in mine]
        known = [value for value in own if not math.isnan(value)]
        summaries.append(
            RateSummary(
                name,
                case,
                rate,
                len(mine),
                _median([run.delivered_per_second for run in mine]),
                _median([run.loss for run in mine]),
                max(run.loss for run in mine),
                _median([run.cpu_us_per_datagram for run in mine]),
                _median([run.core_us_per_datagram for run in mine]),
                _median(own),
                min(known) if known else float("nan"),
                max(known) if known else float("nan"),
            )
        )
    return sorted(summaries, key=lambda s: (s.case, s.offered_per_s))


def echo_ceilings(summaries: list[Summary], rated: list[RateSummary]) -> dict[tuple[str, str], float]:
    """Per echo case and contender: the most replies/s it relayed at any offered load (flat out or paced)."""
    best: dict[tuple[str, str], float] = {}
    for summary in summaries:
        if summary.case.echo:
            best[(str(summary.case), summary.contender)] = summary.median_delivered_per_s
    for rate in rated:
        key = (rate.case, rate.contender)
        best[key] = max(best.get(key, 0.0), rate.median_delivered_per_s)
    return best


def _us(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def fixed_rate_table(rated: list[RateSummary], ceilings: dict[tuple[str, str], float]) -> str:
    """The fixed-rate echo table, one line per case, offered rate and contender, then each contender's
    ceiling per echo case."""
    lines = [
        f"{'fixed-rate echo':<24} {'offered/s':>9} {'contender':<18} {'replies/s':>9} {'loss':>7} "
        f"{'max loss':>8} {'CPU us/reply':>12} {'core us/reply':>13} {'own us/reply':>12} {'own min-max':>13}"
    ]
    for s in rated:
        lines.append(
            f"{s.case:<24} {s.offered_per_s / 1000:>8.0f}k {s.contender:<18} "
            f"{s.median_delivered_per_s / 1000:>8.0f}k {s.median_loss:>7.2%} {s.max_loss:>8.2%} "
            f"{_us(s.median_cpu_us_per_reply):>12} {_us(s.median_core_us_per_reply):>13} "
            f"{_us(s.median_process_us_per_reply):>12} "
            f"{_us(s.min_process_us_per_reply) + '-' + _us(s.max_process_us_per_reply):>13}"
        )
    cases = list(dict.fromkeys(case for case, _ in ceilings))
    for case in cases:
        best = [(name, rate) for (c, name), rate in ceilings.items() if c == case]
        best.sort(key=lambda item: -item[1])
        lines.append(
            f"echo ceiling {case} (most replies/s at any offered load): "
            + ", ".join(f"{name} {rate / 1000:.0f}k" for name, rate in best)
        )
    lines.append(
        "fixed-rate echo: the sender paced to the offered rate; loss counts replies missing at the client; "
        "CPU us/reply: all cores' busy time per reply delivered, core: CPU 1's, "
        "own: the contender's processes"
    )
    return "\n".join(lines)
