"""Logs: `<N>` priority prefixes when stderr is the journal, and one line per repeating error, not one per
datagram."""

import logging
import os
from pathlib import Path

import pytest

from forwarder.logs import JournalFormatter, RepeatSummary, stderr_is_journal


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def collected() -> tuple[logging.Logger, Collect]:
    logger = logging.getLogger(f"forwarder.test.{id(object())}")
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return logger, handler


def test_a_repeating_error_is_logged_once_then_summarised(collected: tuple[logging.Logger, Collect]) -> None:
    logger, handler = collected
    repeats = RepeatSummary(logger)
    for _ in range(1000):
        repeats.report("send-error:ENETUNREACH", "dropped datagram (%s)", "send-error:ENETUNREACH")
    repeats.report("truncated", "dropped datagram (%s)", "truncated")
    assert handler.lines == ["dropped datagram (send-error:ENETUNREACH)", "dropped datagram (truncated)"]
    repeats.flush(10)
    assert handler.lines[2:] == ["send-error:ENETUNREACH: 999 more in the last 10 seconds"]
    repeats.report("truncated", "dropped datagram (%s)", "truncated")
    assert handler.lines[3:] == ["dropped datagram (truncated)"]


def test_journal_formatter_prefixes_the_syslog_priority() -> None:
    formatter = JournalFormatter("%(message)s")
    record = logging.LogRecord("forwarder", logging.WARNING, __file__, 1, "dropped", None, None)
    assert formatter.format(record) == "<4>dropped"


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path: Path) -> None:
    status = os.fstat(2)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"})
    other = os.stat(tmp_path)
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"})
    assert not stderr_is_journal({})
