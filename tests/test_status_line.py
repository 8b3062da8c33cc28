"""netlab's reader of the forwarder's STATUS= line, on the lines the forwarder itself writes."""

from forwarder.core import Counters, DropReason
from netlab.service.status import drops_by_reason, interval_drops, open_flows, status_totals

README_LINE = (
    "12 datagrams forwarded in the last 10 seconds, 2 dropped (family-mismatch 1, send-error:ENETUNREACH 1); "
    "since start 40 forwarded, 3 dropped; 5 flows."
)


def test_the_readme_line_reads_as_totals_drops_and_flows() -> None:
    assert status_totals(README_LINE) == (40, 3)
    assert interval_drops(README_LINE) == {"family-mismatch": 1, "send-error:ENETUNREACH": 1}
    assert open_flows(README_LINE) == 5


def test_a_line_of_another_kind_has_no_totals_drops_or_flows() -> None:
    assert status_totals("Up and running.") is None
    assert interval_drops("Up and running.") == {}
    assert open_flows("Up and running.") == 0


def test_drops_of_several_intervals_add_up_by_reason() -> None:
    lines = [
        "1 datagrams forwarded in the last 1 seconds, 2 dropped (truncated 2); since start 1 forwarded",
        "0 datagrams forwarded in the last 1 seconds, 0 dropped; since start 1 forwarded, 2 dropped",
        "0 datagrams forwarded in the last 1 seconds, 3 dropped (truncated 1, zero-port 2); since start 1",
    ]
    assert drops_by_reason(lines) == {"truncated": 3, "zero-port": 2}


def test_a_line_the_forwarder_writes_reads_back_as_its_counters() -> None:
    counters = Counters()
    counters.forwarded = 7
    counters.drop(DropReason.TRUNCATED)
    counters.drop(DropReason.SEND_ERROR, "EPERM")
    counters.drop(DropReason.SEND_ERROR, "EPERM")
    line = counters.summary(10, flows=4)
    assert status_totals(line) == (7, 3)
    assert interval_drops(line) == {"truncated": 1, "send-error:EPERM": 2}
    assert open_flows(line) == 4
