"""The benchmark's report: a table for people, or a JSON document for machines."""

import math
from dataclasses import asdict
from typing import Any

from netlab.bench.contenders import PEERS
from netlab.bench.lab import Case, Run
from netlab.bench.memory import FlowMemory
from netlab.bench.stats import Summary


def thousands(value: float) -> str:
    """A rate as people read it: 218456.0 -> '218k'."""
    return f"{value / 1000:.0f}k"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def us(value: float) -> str:
    """Microseconds per datagram, `-` when not measured (NaN: a contender without processes of its own)."""
    return "-" if math.isnan(value) else f"{value:.2f}"


def case_label(case: Case) -> str:
    """A case in the table's narrow column: '1200 B x1000 echo' (payload, flows, replies counted)."""
    return f"{case.payload} B x{case.flows}{' echo' if case.echo else ''}"


WIDTH = 100  # the table's lines fit a terminal of this many columns


def format_table(summaries: list[Summary], solo: dict[str, float]) -> str:
    """Two tables that fit WIDTH columns, a line per case and contender in each: the rates, loss and CPU
    per datagram; then the ratios of delivered/s to the baseline, the reference and each peer measured."""
    peers = [peer for peer in PEERS if any(s.contender == peer for s in summaries)]
    lines = [
        f"{'case':<17} {'contender':<18} {'delivered/s':>11} {'min-max':>11} {'offered/s':>9} {'loss':>7} "
        f"{'CPU':>6} {'core':>6} {'own':>6}"
    ]
    for s in summaries:
        spread = f"{thousands(s.min_delivered_per_s)}-{thousands(s.max_delivered_per_s)}"
        lines.append(
            f"{case_label(s.case):<17} {s.contender:<18} {thousands(s.median_delivered_per_s):>11} "
            f"{spread:>11} {thousands(s.median_offered_per_s):>9} {s.median_loss:>7.2%} "
            f"{us(s.median_cpu_us_per_datagram):>6} {us(s.median_core_us_per_datagram):>6} "
            f"{us(s.median_process_us_per_datagram):>6}"
        )
    lines += [
        "CPU, core, own: microseconds of CPU per delivered datagram, of all cores (busy time), of the",
        "contenders' core alone, and of the contender's own processes (with the kernel's inline work in",
        "their system calls). x1000: 1000 flows; echo: the replies delivered back at the client count.",
    ]
    lines.append("")
    lines.append(
        f"{'ratios of delivered/s':<36} {'x DNAT+RPS':>10} {'x per-dgram':>11} "
        + " ".join(f"{'x ' + peer:>12}" for peer in peers)
    )
    for s in summaries:
        lines.append(
            f"{case_label(s.case):<17} {s.contender:<18} {ratio(s.ratio_to_kernel_dnat_rps):>10} "
            f"{ratio(s.ratio_to_per_datagram):>11} "
            + " ".join(f"{ratio(s.ratio_to_peers.get(peer)):>12}" for peer in peers)
        )
    lines.append(
        "sender alone (host drops on arrival): " + ", ".join(f"{k} {thousands(v)}/s" for k, v in solo.items())
    )
    return "\n".join(line.rstrip() for line in lines)


def progress_line(done: int, total: int, repetition: int, run: Run) -> str:
    """One finished run as the progress lines on stderr say it, within WIDTH columns: run of runs (and
    repetition), case, contender, delivered/s, loss and CPU us per datagram (`-`: not measured)."""
    return (
        f"[{done}/{total}{'' if repetition == 1 else f' r{repetition}'}] {case_label(run.case):<17} "
        f"{run.contender:<18} {thousands(run.delivered_per_second)}/s loss {run.loss:.2%} us/dg "
        f"{us(run.cpu_us_per_datagram)} all {us(run.core_us_per_datagram)} core "
        f"{us(run.process_us_per_datagram)} own"
    )


QUICK_NOTE = (
    "quick figures are a smoke test (one short run per case, on whatever else this machine is doing):\n"
    "they show that every contender works, not how fast; compare only the figures of `netlab bench --full`."
)


def memory_line(memory: FlowMemory) -> str:
    rss = (memory.rss_kib_after - memory.rss_kib_before) / 1024
    rss_100k = (memory.rss_kib_before * 1024 + 100_000 * memory.rss_bytes_per_flow) / 2**20
    kernel_100k = 100_000 * memory.kernel_bytes_per_flow / 2**20
    return (
        f"{memory.contender}: {memory.flows} open flows, {memory.fds_before} -> {memory.fds_after} file "
        f"descriptors ({memory.fds_per_flow:.2f}/flow): RSS {memory.rss_kib_before / 1024:.1f} -> "
        f"{memory.rss_kib_after / 1024:.1f} MiB (+{rss:.1f} MiB, {memory.rss_bytes_per_flow:.0f} B/flow); "
        f"kernel slab +{memory.slab_kib_delta / 1024:.1f} MiB ({memory.kernel_bytes_per_flow:.0f} B/flow); "
        f"at 100000 flows: RSS ~{rss_100k:.0f} MiB, kernel ~{kernel_100k:.0f} MiB"
    )


def text_report(
    summaries: list[Summary],
    solo: dict[str, float],
    loss_runs: list[Run],
    memory: list[FlowMemory],
    skipped: dict[str, str] | None = None,
) -> str:
    """The table, then the skipped contenders and the memory (one line per send path) and loss lines of a
    full run."""
    lines = [format_table(summaries, solo)]
    lines += [f"skipped {name}: {reason}" for name, reason in (skipped or {}).items()]
    lines += [memory_line(measured) for measured in memory]
    lines += [
        f"loss at {thousands(run.rate_limit)}/s offered, {run.case}: {run.loss:.3%} "
        f"({run.offered - run.delivered} of {run.offered} lost)"
        for run in loss_runs
    ]
    return "\n".join(lines)


def json_document(  # noqa: PLR0913 - the parts of one JSON document
    summaries: list[Summary],
    solo: dict[str, float],
    runs: list[Run],
    loss_runs: list[Run],
    memory: list[FlowMemory],
    *,
    skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything measured, for machines: summaries per case, every run, loss runs, flow memory (by
    contender: one per send path), and the contenders skipped (with why)."""
    return {
        "skipped": dict(skipped or {}),
        "flow_memory": {
            measured.contender: asdict(measured)
            | {
                "rss_bytes_per_flow": measured.rss_bytes_per_flow,
                "kernel_bytes_per_flow": measured.kernel_bytes_per_flow,
                "fds_per_flow": measured.fds_per_flow,
            }
            for measured in memory
        },
        "sender_solo_per_s": solo,
        "cases": [asdict(summary) for summary in summaries],
        "loss": [
            {
                "case": asdict(run.case),
                "offered_per_s": run.rate_limit,
                "sent": run.offered,
                "delivered": run.delivered,
                "loss": run.loss,
            }
            for run in loss_runs
        ],
        "runs": [
            asdict(run)
            | {
                "delivered_per_s": run.delivered_per_second,
                "cpu_us_per_datagram": run.cpu_us_per_datagram,
                "core_us_per_datagram": run.core_us_per_datagram,
                "process_us_per_datagram": run.process_us_per_datagram,
            }
            for run in runs
        ],
    }
