"""The forwarder's STATUS= line: the time it covers, where it goes without a service manager, and netlab's
reader of it, on the lines the forwarder itself writes."""

import logging
import socket
from collections.abc import Iterator

import pytest

from forwarder.core.counters import Counters, DropReason
from forwarder.core.destination import Destination
from forwarder.core.machine import ForwardingMachine
from forwarder.io.engine import Engine
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.service.notify import Notifier
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


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def forwarder_log() -> Iterator[_Lines]:
    """Every record of the forwarder's logger, whatever level an earlier test configured."""
    logger = logging.getLogger("forwarder")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def engine() -> Iterator[Engine]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        route = Route(ListeningSocket(listener, "dns"), Destination(socket.AF_INET, "192.0.2.2", 53))
        yield Engine([route], Notifier({}), ForwardingMachine(max_flows=8, idle_timeout=60), stats_interval=1)


def _status_lines(handler: _Lines) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in handler.records if r.getMessage().startswith("status: ")]


def test_the_status_line_names_the_time_that_passed_not_the_configured_interval(
    engine: Engine, forwarder_log: _Lines
) -> None:
    # After a 5 s SIGSTOP a 1 s interval really lasted 6 s: the line said 1.
    start = engine.interval_start
    engine.report_status(start + 6)
    engine.report_status(start + 7.25)
    assert [text for _, text in _status_lines(forwarder_log)] == [
        "status: 0 datagrams forwarded in the last 6 seconds, 0 dropped; since start 0 forwarded, 0 dropped; "
        "0 flows.",
        "status: 0 datagrams forwarded in the last 1.25 seconds, 0 dropped; since start 0 forwarded, "
        "0 dropped; 0 flows.",
    ]


def test_repeated_log_lines_are_summed_over_the_time_that_passed(
    engine: Engine, forwarder_log: _Lines
) -> None:
    for _ in range(3):
        engine.repeats.report("truncated", "dropped datagram (%s)", "truncated")
    engine.report_status(engine.interval_start + 4.5)
    assert "truncated: 2 more in the last 4.5 seconds" in [r.getMessage() for r in forwarder_log.records]


def test_without_a_notify_socket_the_status_line_is_logged_at_info(
    engine: Engine, forwarder_log: _Lines
) -> None:
    engine.report_status()
    assert [level for level, _ in _status_lines(forwarder_log)] == [logging.INFO]


def test_with_a_notify_socket_the_status_line_goes_there_and_is_logged_at_debug_only(
    engine: Engine, forwarder_log: _Lines
) -> None:
    name = f"forwarder-status-test-{id(engine)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        engine.notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        try:
            engine.report_status()
            sent = manager.recv(4096)
        finally:
            engine.notifier.close()
    assert sent.startswith(b"STATUS=0 datagrams forwarded in the last ")
    assert [level for level, _ in _status_lines(forwarder_log)] == [logging.DEBUG]
