"""`python -m netlab.bench.drain_cost`: the drain driver forwards every datagram queued before it starts, on
each send path, and instruction totals are read from callgrind's output.

    client (blaster) 198.51.100.10 --- 198.51.100.1 [host: drain_driver] 192.0.2.1 --- 192.0.2.2 backend
"""

from pathlib import Path

import pytest

from netlab.bench.drain_cost import STAGES, DrainCase, DrainCost, ReplySplit, callgrind_total
from netlab.bench.lab import Case
from netlab.lab.lab import Lab


def test_the_instruction_total_is_read_from_callgrinds_totals_line(tmp_path: Path) -> None:
    output = tmp_path / "callgrind.out"
    output.write_text("version: 1\ncmd: python3\nevents: Ir\nfn=main\n12 5\ntotals: 123456789\n")

    assert callgrind_total(output) == 123456789


def test_a_callgrind_file_without_totals_is_an_error_naming_it(tmp_path: Path) -> None:
    output = tmp_path / "callgrind.out"
    output.write_text("version: 1\n")

    with pytest.raises(ValueError, match=r"callgrind\.out: no totals line"):
        callgrind_total(output)


@pytest.mark.privileged
@pytest.mark.parametrize("send_path", ["raw", "sockets"])
def test_the_drain_driver_forwards_every_datagram_queued_before_it_starts(lab: Lab, send_path: str) -> None:
    cost = DrainCost(lab)

    drained = cost.run(DrainCase(send_path, 10, 64), 300, callgrind=False)

    assert drained.forwarded == 300
    assert cost.bench.settle(Case(64, 10)) == 300  # all of them arrived at the backend


def test_a_replys_cost_splits_into_what_each_stage_adds() -> None:
    split = ReplySplit.of_stages({"receive": 1200.0, "match": 5000.0, "relay": 5100.0})

    assert (split.receive, split.python, split.send) == (1200.0, 3800.0, 100.0)
    assert split.total == 5100.0


@pytest.mark.privileged
@pytest.mark.parametrize("stage", STAGES)
def test_the_drain_driver_reads_every_steered_reply_queued_before_it_starts(lab: Lab, stage: str) -> None:
    # One datagram per flow opens 10 flows; the backend's 300 replies wait on the reply socket, and the
    # driver reads them all in every stage; only the last one sends them back to the clients.
    cost = DrainCost(lab)

    drained = cost.run(DrainCase("raw", 10, 64, replies=True), 300, callgrind=False, stage=stage)

    assert drained.forwarded == 300
    assert cost.bench.settle(Case(64, 10, echo=True)) == (300 if stage == "relay" else 0)
