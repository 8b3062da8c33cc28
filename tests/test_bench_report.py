"""What `netlab bench` prints and draws: a table that fits 100 columns, `-` for a figure not measured, the
line saying quick figures are a smoke test, and `--plot` drawing the ratios of a run or of a saved
`--json` document (tests/fixtures: fixtures/bench/synthetic-quick-run.json, made-up figures)."""

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import netlab.bench.run
import netlab.cli.bench
from netlab.bench.contenders import CONTENDERS, PEERS
from netlab.bench.lab import Case, Run
from netlab.bench.plot import is_quick, ratio_panels
from netlab.bench.report import QUICK_NOTE, WIDTH, progress_line, text_report
from netlab.bench.run import Settings
from netlab.bench.stats import summarize
from netlab.cli.main import main
from netlab.fixtures import fixture_path

CASES = [Case(1200, 1000, echo=True), Case(64, 1), Case(1200, 1000)]


def saved_run() -> Path:
    return fixture_path("bench", "synthetic-quick-run", ".json")


def every_contender_runs() -> list[Run]:
    return [
        Run(
            name,
            case,
            offered=1_000_000,
            delivered=987_654,
            seconds=1.0,
            busy_cpu_seconds=123.0,  # three-digit microseconds per datagram: the widest figure
            process_cpu_seconds=None if name.startswith("kernel") else 0.5,
        )
        for case in CASES
        for name in CONTENDERS
    ]


def test_the_table_with_every_contender_and_peer_fits_100_columns_and_never_says_nan() -> None:
    runs = every_contender_runs()
    report = text_report(summarize(runs), {"64 B x 1 flow": 1e6}, [], [], {})
    widest = max(report.splitlines(), key=len)
    assert len(widest) <= WIDTH, widest
    assert "nan" not in report.lower()
    assert all(f"x {peer}" in report for peer in PEERS)
    kernel = next(
        line for line in report.splitlines() if "1200 B x1000 echo" in line and "kernel-dnat " in line
    )
    assert kernel.split()[-1] == "-"  # kernel DNAT has no processes of its own


def test_a_progress_line_says_dash_for_a_figure_not_measured() -> None:
    run = every_contender_runs()[0]
    assert run.contender == "kernel-dnat+rps"
    line = progress_line(1, 30, 1, run)
    assert line.endswith(" core - own")
    assert "nan" not in line
    assert len(line) <= WIDTH


@pytest.fixture
def fake_bench(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """`netlab bench` without measuring: run_bench prints a table and hands the saved run to --plot."""
    calls: list[Settings] = []

    def run_bench(settings: Settings, as_json: bool = False, plot: Any = None, **_: Any) -> int:
        calls.append(settings)
        document = json.loads(saved_run().read_text())
        print(json.dumps(document) if as_json else "the table")
        if plot is not None:
            plot(document)
        return 0

    monkeypatch.setattr(netlab.bench.run, "run_bench", run_bench)
    monkeypatch.setattr(netlab.cli.bench, "require_privileges", lambda: None)
    return calls


def test_a_quick_run_ends_saying_its_figures_are_a_smoke_test(
    fake_bench: list[Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    assert out == "the table\n" + QUICK_NOTE + "\n"
    assert "smoke test" in QUICK_NOTE
    assert "not how fast" in QUICK_NOTE
    assert main(["bench", "--full"]) == 0
    assert "smoke test" not in capsys.readouterr().out
    assert main(["bench", "--json"]) == 0
    json.loads(capsys.readouterr().out)  # still one JSON document


def test_plot_draws_the_ratios_of_the_run_it_measured(
    fake_bench: list[Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ratios.svg"
    assert main(["bench", "--plot", str(out)]) == 0
    svg = out.read_text()
    assert "<svg" in svg
    assert "forwarder-gso" in svg
    assert "go-mmproxy" in svg
    assert f"the ratios are drawn in {out}" in capsys.readouterr().err


def test_plot_from_a_saved_json_draws_one_panel_per_reference_and_calls_a_quick_run_so(
    tmp_path: Path,
) -> None:
    out = tmp_path / "saved.svg"
    assert main(["bench", "--plot", str(out), "--from", str(saved_run())]) == 0
    svg = out.read_text()
    for title in ("ratio to kernel DNAT+RPS", "ratio to nginx", "ratio to go-mmproxy"):
        assert title in svg
    assert "a quick run, a smoke test; its figures are not comparable" in svg
    assert "64 B x1000" in svg


def test_the_panels_hold_each_contenders_ratio_per_case_but_not_the_reference_itself() -> None:
    document = json.loads(saved_run().read_text())
    panels = ratio_panels(document)
    assert list(panels) == ["kernel DNAT+RPS", "nginx", "go-mmproxy"]
    assert "kernel-dnat+rps" not in panels["kernel DNAT+RPS"]
    assert "nginx" not in panels["nginx"]
    assert panels["nginx"]["forwarder"]["64 B x1"] == pytest.approx(0.8)
    assert is_quick(document)
    assert not is_quick(document | {"loss": [{"case": {}}]})
    # Flow memory by send path: none measured in a quick run, one entry per path in a full one.
    assert is_quick(document | {"flow_memory": {}})
    assert not is_quick(document | {"flow_memory": {"forwarder": {"flows": 100_000}}})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "run.json"], "--from FILE.json goes with --plot FILE.svg"),
        (["--plot", "ratios.txt", "--from", "run.json"], "expected a file ending in one of .svg, .png, .pdf"),
        (["--plot", "ratios.txt"], "expected a file ending in one of .svg, .png, .pdf"),
        (["--plot", "ratios.svg", "--from", "/nonexistent/run.json"], "no such file"),
    ],
)
def test_bad_plot_arguments_exit_64_naming_them(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *args]) == 64
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_plot_without_matplotlib_exits_69_naming_the_plot_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "--plot", str(tmp_path / "x.svg"), "--from", str(saved_run())]) == 69
    assert "transparent-udp-forwarder[plot]" in capsys.readouterr().err


def test_matplotlib_comes_only_with_the_plot_extra_never_with_the_forwarder_or_the_lab() -> None:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())[
        "project"
    ]
    assert not any("matplotlib" in requirement for requirement in project["dependencies"])
    extras = project["optional-dependencies"]
    assert [r for r in extras["plot"] if r.startswith("matplotlib")]
    assert not any("matplotlib" in requirement for requirement in extras["lab"])
    assert any("[lab,plot]" in requirement for requirement in extras["test"])
