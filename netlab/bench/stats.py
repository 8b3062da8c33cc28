"""Medians, ranges and ratios of the benchmark's runs, per case and contender."""

import statistics
from dataclasses import dataclass, field

from netlab.bench.contenders import BASELINE, CONTENDERS, PEERS, REFERENCE
from netlab.bench.lab import Case, Run


@dataclass
class Summary:
    """Medians and ranges per case and contender, with the ratios the targets are stated in: to kernel
    DNAT with RPS, to the per-datagram reference, and to each peer (nginx, go-mmproxy) measured in the
    same case. CPU per delivered datagram is given for the whole machine, for the contenders' core and for the
    contender's own processes."""

    contender: str
    case: Case
    median_delivered_per_s: float
    min_delivered_per_s: float
    max_delivered_per_s: float
    median_offered_per_s: float
    median_loss: float
    median_cpu_us_per_datagram: float
    median_core_us_per_datagram: float = float("nan")
    median_process_us_per_datagram: float = float("nan")
    ratio_to_kernel_dnat_rps: float | None = None
    ratio_to_per_datagram: float | None = None
    ratio_to_peers: dict[str, float] = field(default_factory=dict)


def summarize(runs: list[Run]) -> list[Summary]:
    """One Summary per case and contender (cases in order, contenders in CONTENDERS order), ratios filled."""
    summaries: list[Summary] = []
    measured = [run for run in runs if not run.rate_limit]
    order = {name: index for index, name in enumerate(CONTENDERS)}
    keys = sorted(
        {(run.case.echo, run.case.payload, run.case.flows, run.contender) for run in measured},
        key=lambda key: (*key[:3], order.get(key[3], len(order)), key[3]),
    )
    for echo, payload, flows, name in keys:
        case = Case(payload, flows, echo)
        mine = [r for r in measured if (r.case, r.contender) == (case, name)]
        rates = [r.delivered_per_second for r in mine]
        summaries.append(
            Summary(
                name,
                case,
                statistics.median(rates),
                min(rates),
                max(rates),
                statistics.median(r.offered_per_second for r in mine),
                statistics.median(r.loss for r in mine),
                statistics.median(r.cpu_us_per_datagram for r in mine),
                statistics.median(r.core_us_per_datagram for r in mine),
                statistics.median(r.process_us_per_datagram for r in mine),
            )
        )
    for summary in summaries:
        for other in summaries:
            if other.case != summary.case or not other.median_delivered_per_s:
                continue
            ratio = summary.median_delivered_per_s / other.median_delivered_per_s
            if other.contender == BASELINE:
                summary.ratio_to_kernel_dnat_rps = ratio
            if other.contender == REFERENCE:
                summary.ratio_to_per_datagram = ratio
            if other.contender in PEERS:
                summary.ratio_to_peers[other.contender] = ratio
    return summaries
