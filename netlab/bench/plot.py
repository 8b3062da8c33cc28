"""`netlab bench --plot FILE.svg`: the ratios of a run (or of a saved `--json` document) as grouped bars,
one panel per reference (kernel DNAT with RPS, then each peer measured), a bar per contender and case.
matplotlib comes with the optional `plot` extra; the forwarder's install never needs it."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from netlab.errors import NetlabError, UsageError

PLOT_EXTRA = "pip install 'transparent-udp-forwarder[plot]'"
FORMATS = (".svg", ".png", ".pdf")


class PlotUnavailableError(NetlabError):
    """matplotlib (the `plot` extra) is not installed."""


def _case_label(case: Mapping[str, Any]) -> str:
    return f"{case['payload']} B x{case['flows']}" + (" echo" if case.get("echo") else "")


def ratio_panels(document: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """reference -> contender -> case label -> ratio of delivered/s, from a `netlab bench --json` document;
    the reference itself and ratios not measured are left out."""
    panels: dict[str, dict[str, dict[str, float]]] = {"kernel DNAT+RPS": {}}
    for summary in document.get("cases", []):
        name, case = summary["contender"], _case_label(summary["case"])
        if summary.get("ratio_to_kernel_dnat_rps") is not None and name != "kernel-dnat+rps":
            panels["kernel DNAT+RPS"].setdefault(name, {})[case] = summary["ratio_to_kernel_dnat_rps"]
        for peer, value in (summary.get("ratio_to_peers") or {}).items():
            if peer != name and value is not None:
                panels.setdefault(peer, {}).setdefault(name, {})[case] = value
    return {reference: bars for reference, bars in panels.items() if bars}


def is_quick(document: Mapping[str, Any]) -> bool:
    """Whether the document is of a quick run: only a full run has loss tests and the flow memory (one
    entry per send path measured; None in documents written before there were two)."""
    return not document.get("loss") and not document.get("flow_memory")


def plot_ratios(document: Mapping[str, Any], path: Path) -> Path:
    """Draw the ratios of `document` into `path` (.svg, .png or .pdf); returns the path."""
    if path.suffix not in FORMATS:
        raise UsageError(f"--plot {str(path)!r}: expected a file ending in one of {', '.join(FORMATS)}")
    panels = ratio_panels(document)
    if not panels:
        raise UsageError("nothing to plot: the run has no ratios (measure the forwarder with a reference)")
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display
        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, and smaller
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError(f"--plot needs matplotlib: {PLOT_EXTRA}") from None
    cases = [_case_label(summary["case"]) for summary in document.get("cases", [])]
    cases = list(dict.fromkeys(cases))
    names = list(dict.fromkeys(summary["contender"] for summary in document.get("cases", [])))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {name: palette[index % len(palette)] for index, name in enumerate(names)}  # same in every panel
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(10, 2.2 + 1.6 * len(panels)), squeeze=False, layout="constrained"
    )
    for axis, (reference, bars) in zip(axes[:, 0], panels.items(), strict=True):
        width = 0.8 / len(bars)
        for index, (name, values) in enumerate(bars.items()):
            xs = [position + (index - (len(bars) - 1) / 2) * width for position in range(len(cases))]
            heights = [values.get(case, 0.0) for case in cases]
            drawn = axis.bar(xs, heights, width, label=name, color=colour[name])
            axis.bar_label(drawn, labels=[f"{v:.2f}" if v else "" for v in heights], fontsize=7)
        axis.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        axis.set_xticks(range(len(cases)), cases)
        axis.set_ylabel(f"x {reference}")
        axis.set_title(f"delivered/s as a ratio to {reference} (higher is better; 1 = as fast)", fontsize=10)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    title = "netlab bench"
    if is_quick(document):
        title += ": a quick run, a smoke test; its figures are not comparable"
    figure.suptitle(title)
    figure.savefig(path)
    plt.close(figure)
    return path


__all__ = ["PlotUnavailableError", "is_quick", "plot_ratios", "ratio_panels"]
