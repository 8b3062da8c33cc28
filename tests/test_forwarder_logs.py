"""Logs: `<N>` priority prefixes when stderr is the journal, and one line per repeating error, not one per
datagram."""

import logging
import os
import socket
from pathlib import Path as FilePath

import pytest

from forwarder.core.actions import Drop
from forwarder.core.addresses import endpoint_text, sockaddr_bytes
from forwarder.core.destination import Destination
from forwarder.core.flows import Path
from forwarder.core.machine import ForwardingMachine
from forwarder.io.engine import Engine
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.io.repeats import RepeatSummary
from forwarder.service.logs import JournalFormatter, stderr_is_journal
from forwarder.service.notify import Notifier


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


def test_stderr_is_the_journal_only_when_journal_stream_names_it(tmp_path: FilePath) -> None:
    status = os.fstat(2)
    assert stderr_is_journal({"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"})
    other = os.stat(tmp_path)
    assert not stderr_is_journal({"JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"})
    assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"})
    assert not stderr_is_journal({})


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (("203.0.113.0", 0), "203.0.113.0:0"),
        (("2001:db8::1", 53), "[2001:db8::1]:53"),
        (("2001:db8::1", 53, 0, 0), "[2001:db8::1]:53"),
        (("fe80::1", 53, 0, 2), "[fe80::1%2]:53"),
        (("::ffff:192.0.2.1", 53, 0, 0), "[::ffff:192.0.2.1]:53"),
    ],
)
def test_an_endpoint_is_written_host_port_with_ipv6_in_brackets(
    address: tuple[object, ...], text: str
) -> None:
    assert endpoint_text(address) == text


def test_a_dropped_datagrams_log_line_names_the_client_as_host_port_not_a_tuple() -> None:
    destination = Destination(socket.AF_INET6, "2001:db8::1", 53)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        route = Route(ListeningSocket(listener, "dns"), Destination(socket.AF_INET, "192.0.2.2", 53))
        engine = Engine([route], Notifier({}), ForwardingMachine(max_flows=8, idle_timeout=60))
        handler = Collect()
        logger = logging.getLogger("forwarder")
        logger.addHandler(handler)
        try:
            path = Path("dns", destination)
            engine.log_drop(Drop("zero-port", path, sockaddr_bytes(socket.AF_INET, ("203.0.113.0", 0))))
            engine.log_drop(
                Drop("reply-unmatched", path, sockaddr_bytes(socket.AF_INET6, ("2001:db8::7", 9)), True)
            )
        finally:
            logger.removeHandler(handler)
    assert handler.lines == [
        "dropped datagram (zero-port) from 203.0.113.0:0 on dns to [2001:db8::1]:53",
        "dropped reply (reply-unmatched) from [2001:db8::1]:53 to [2001:db8::7]:9 on dns",
    ]
