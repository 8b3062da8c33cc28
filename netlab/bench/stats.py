"""Medians, ranges and ratios of the benchmark's runs, per case and contender."""

import statistics
from dataclasses import dataclass

from netlab.bench.contenders import BASELINE, REFERENCE
from netlab.bench.lab import Case, Run


@dataclass
class Summary:
    """Medians and ranges per case and contender, with the ratios the targets are stated in."""

    contender: str
    case: Case
    median_delivered_per_s: float
    min_delivered_per_s: float
    max_delivered_per_s: float
    median_offered_per_s: float
    median_loss: float
    median_cpu_us_per_datagram: float
    ratio_to_kernel_dnat_rps: float | None = None
    ratio_to_per_datagram: float | None = None


def summarize(runs: list[Run]) -> list[Summary]:
    summaries: list[Summary] = []
    keys = sorted({(run.case.payload, run.case.flows, run.contender) for run in runs if not run.rate_limit})
    for payload, flows, name in keys:
        mine = [r for r in runs if (r.case.payload, r.case.flows, r.contender) == (payload, flows, name)]
        mine = [r for r in mine if not r.rate_limit]
        rates = [r.delivered_per_second for r in mine]
        summaries.append(
            Summary(
                name,
                Case(payload, flows),
                statistics.median(rates),
                min(rates),
                max(rates),
                statistics.median(r.offered_per_second for r in mine),
                statistics.median(r.loss for r in mine),
                statistics.median(r.cpu_us_per_datagram for r in mine),
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
    return summaries
