"""The Prometheus textfile output: the exposition format, totals kept across status intervals, atomic
replacement of the file, a failing write that never stops forwarding, and the forwarder writing it for real.
"""

import logging
import os
import re
import socket
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import status_has
from test_forwarder_startup import launch, one_error_line

from forwarder.core.counters import Counters, DropReason, Totals
from forwarder.service.metrics import MetricsFile, escape, exposition, listen_label
from netlab import Lab, start_forwarder
from netlab.topology.shipped import seed_deployment

# A sample line of the text format: name, optional {labels}, value.
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? \d+$'
)


def assert_valid_exposition(text: str) -> None:
    """Every line is a HELP, a TYPE or a sample; each family's HELP and TYPE come before its samples."""
    assert text.endswith("\n")
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            typed.add(line.split()[2])
            continue
        assert SAMPLE.match(line), line
        assert re.split(r"[{ ]", line, maxsplit=1)[0] in typed, line


def totals(
    forwarded: int = 0,
    dropped: dict[str, int] | None = None,
    relayed: int = 0,
    reply_dropped: dict[str, int] | None = None,
    icmp_errors: dict[str, int] | None = None,
) -> Totals:
    return Totals(
        forwarded,
        Counter(dropped or {}),
        relayed,
        Counter(reply_dropped or {}),
        Counter(icmp_errors or {}),
    )


def test_the_exposition_names_totals_drops_by_reason_replies_icmp_errors_and_flows() -> None:
    text = exposition(
        totals(
            40,
            {"send-error:EPERM": 2, "family-mismatch": 1},
            38,
            {"reply-unmatched": 1},
            {"backend-unreachable": 3},
        ),
        5,
        {"listen": "[::]:27015"},
    )
    assert text == (
        "# HELP transparent_udp_forwarder_datagrams_forwarded_total Datagrams forwarded since the forwarder"
        " started.\n"
        "# TYPE transparent_udp_forwarder_datagrams_forwarded_total counter\n"
        'transparent_udp_forwarder_datagrams_forwarded_total{listen="[::]:27015"} 40\n'
        "# HELP transparent_udp_forwarder_datagrams_dropped_total Datagrams dropped since the forwarder"
        " started, by reason.\n"
        "# TYPE transparent_udp_forwarder_datagrams_dropped_total counter\n"
        'transparent_udp_forwarder_datagrams_dropped_total{listen="[::]:27015",reason="family-mismatch"} 1\n'
        'transparent_udp_forwarder_datagrams_dropped_total{listen="[::]:27015",reason="send-error:EPERM"} 2\n'
        "# HELP transparent_udp_forwarder_replies_relayed_total Backend replies relayed to clients since"
        " start.\n"
        "# TYPE transparent_udp_forwarder_replies_relayed_total counter\n"
        'transparent_udp_forwarder_replies_relayed_total{listen="[::]:27015"} 38\n'
        "# HELP transparent_udp_forwarder_replies_dropped_total Backend replies not relayed since start, by"
        " reason.\n"
        "# TYPE transparent_udp_forwarder_replies_dropped_total counter\n"
        'transparent_udp_forwarder_replies_dropped_total{listen="[::]:27015",reason="reply-unmatched"} 1\n'
        "# HELP transparent_udp_forwarder_icmp_errors_total ICMP errors on the per-flow sockets since start,"
        " by type.\n"
        "# TYPE transparent_udp_forwarder_icmp_errors_total counter\n"
        'transparent_udp_forwarder_icmp_errors_total{listen="[::]:27015",type="backend-unreachable"} 3\n'
        "# HELP transparent_udp_forwarder_flows Per-flow sockets open.\n"
        "# TYPE transparent_udp_forwarder_flows gauge\n"
        'transparent_udp_forwarder_flows{listen="[::]:27015"} 5\n'
    )
    assert_valid_exposition(text)


def test_without_labels_and_drops_the_exposition_is_still_valid() -> None:
    text = exposition(totals(), 0)
    assert "transparent_udp_forwarder_datagrams_forwarded_total 0\n" in text
    assert "transparent_udp_forwarder_replies_relayed_total 0\n" in text
    assert "datagrams_dropped_total{" not in text
    assert "icmp_errors_total{" not in text
    assert_valid_exposition(text)


def test_label_values_are_escaped() -> None:
    assert escape('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert_valid_exposition(exposition(totals(1, {'x"\n\\': 1}), 0, {"listen": "a\\b"}))


def test_listen_label_names_every_listening_address() -> None:
    four, six = (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
    )
    with four, six:
        four.bind(("127.0.0.1", 0))
        six.bind(("::1", 0))
        expected = f"127.0.0.1:{four.getsockname()[1]},[::1]:{six.getsockname()[1]}"
        assert listen_label([four, six]) == expected


def test_totals_add_up_across_intervals_and_the_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "forwarder.prom"
    metrics = MetricsFile(path)
    counters = Counters()
    counters.forwarded = 10
    counters.drop(DropReason.SEND_ERROR, "EPERM")
    metrics.write(counters, 3)
    counters.reset()
    counters.forwarded = 5
    counters.drop(DropReason.SEND_ERROR, "EPERM")
    counters.drop(DropReason.TRUNCATED)
    metrics.write(counters, 2)

    text = path.read_text()
    assert "transparent_udp_forwarder_datagrams_forwarded_total 15\n" in text
    assert 'transparent_udp_forwarder_datagrams_dropped_total{reason="send-error:EPERM"} 2\n' in text
    assert 'transparent_udp_forwarder_datagrams_dropped_total{reason="truncated"} 1\n' in text
    assert "transparent_udp_forwarder_flows 2\n" in text
    assert [item.name for item in tmp_path.iterdir()] == ["forwarder.prom"]  # no temporary file left


class Recorded(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_failing_write_is_logged_once_until_it_works_again(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "forwarder.prom"
    metrics = MetricsFile(path)
    recorded = Recorded()
    logger = logging.getLogger("forwarder")
    logger.addHandler(recorded)
    try:
        for _ in range(3):
            metrics.write(Counters(), 0)
        path.parent.mkdir()
        metrics.write(Counters(), 7)
    finally:
        logger.removeHandler(recorded)
    assert len(recorded.messages) == 2, recorded.messages
    assert recorded.messages[0].startswith(f"cannot write metrics file {str(path)!r}: ")
    assert recorded.messages[1] == f"metrics file {str(path)!r} written again"
    assert "transparent_udp_forwarder_flows 7\n" in path.read_text()


@pytest.mark.privileged
def test_the_forwarder_writes_its_counters_to_the_metrics_file(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    path = lab.workdir / "textfile" / "forwarder.prom"
    path.parent.mkdir()
    forwarder = start_forwarder(
        lab["host"],
        ["198.51.100.1:27000"],
        ["192.0.2.2:27000"],
        args=["--stats-interval", "0.2", "--metrics-file", str(path)],
    )
    client = lab["client"].udp_socket("198.51.100.10", 0)
    for payload in (b"one", b"two", b"three"):
        client.sendto(payload, ("198.51.100.1", 27000))
        assert backend.recvfrom(65535)[0] == payload
    forwarder.wait_ready()
    forwarder.notify.wait_for("STATUS", status_has("since start 3 forwarded, 0 dropped"), timeout=10)

    text = path.read_text()  # written before each STATUS=
    assert 'transparent_udp_forwarder_datagrams_forwarded_total{listen="198.51.100.1:27000"} 3\n' in text
    assert 'transparent_udp_forwarder_flows{listen="198.51.100.1:27000"} 1\n' in text
    assert_valid_exposition(text)
    assert forwarder.stop() == 0


def test_a_target_that_became_a_directory_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "forwarder.prom"
    metrics = MetricsFile(path)
    metrics.write(Counters(), 1)
    path.unlink()
    path.mkdir()  # replaced by a directory while running: os.replace cannot write over it
    recorded = Recorded()
    logger = logging.getLogger("forwarder")
    logger.addHandler(recorded)
    try:
        metrics.write(Counters(), 2)
        metrics.write(Counters(), 3)
    finally:
        logger.removeHandler(recorded)
    assert len(recorded.messages) == 1, recorded.messages
    assert recorded.messages[0].startswith(f"cannot write metrics file {str(path)!r}: ")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["forwarder.prom"]  # no temporary file left


@pytest.fixture
def udp4() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


@pytest.mark.parametrize(("kind", "make"), [("a FIFO", os.mkfifo), ("a character device", None)])
def test_a_metrics_file_naming_a_fifo_or_a_device_is_refused_not_replaced(
    tmp_path: Path, kind: str, make: Callable[[Path], None] | None
) -> None:
    path = tmp_path / "forwarder.prom"
    if make is None:
        path = Path("/dev/null")  # as root it would have become a regular file
    else:
        make(path)
    result = launch([], ["--metrics-file", str(path), "192.0.2.2"], env={})
    assert result.returncode == 64
    assert f"--metrics-file: {str(path)!r} exists and is not a regular file ({kind})" in one_error_line(
        result
    )
    assert not stat.S_ISREG(path.stat().st_mode)


def test_a_metrics_file_whose_temporary_name_is_too_long_is_refused_at_start_up(
    udp4: socket.socket, tmp_path: Path
) -> None:
    # NAME fits in 255 bytes, .NAME.PID.tmp does not: it passed start-up and was never written.
    path = tmp_path / ("m" * 250)
    result = launch([udp4.fileno()], ["--metrics-file", str(path), "192.0.2.2"])
    assert result.returncode == 64
    line = one_error_line(result)
    assert f"--metrics-file {str(path)!r}: cannot write its temporary file" in line
    assert "(ENAMETOOLONG)" in line
    assert list(tmp_path.iterdir()) == []


def test_a_metrics_file_in_a_missing_directory_is_refused_at_start_up_naming_the_errno(
    udp4: socket.socket, tmp_path: Path
) -> None:
    path = tmp_path / "missing" / "forwarder.prom"
    result = launch([udp4.fileno()], ["--metrics-file", str(path), "192.0.2.2"])
    assert result.returncode == 71
    assert f"--metrics-file {str(path)!r}: cannot write its temporary file" in one_error_line(result)
    assert "(ENOENT)" in one_error_line(result)


def test_the_start_up_check_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    metrics = MetricsFile(tmp_path / "forwarder.prom")
    metrics.check()
    assert list(tmp_path.iterdir()) == []


def test_a_symlink_planted_at_the_temporary_name_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    metrics = MetricsFile(tmp_path / "forwarder.prom")
    metrics.temporary.symlink_to(victim)

    assert metrics.write(Counters(), 4)
    assert victim.read_text() == "precious\n"
    assert "transparent_udp_forwarder_flows 4\n" in (tmp_path / "forwarder.prom").read_text()


def test_a_fifo_planted_at_the_temporary_name_never_blocks_the_write(tmp_path: Path) -> None:
    metrics = MetricsFile(tmp_path / "forwarder.prom")
    os.mkfifo(metrics.temporary)
    done = threading.Event()

    def write() -> None:
        metrics.write(Counters(), 5)
        done.set()

    # Opening a FIFO for writing waits for a reader: the forwarder's loop would hang there.
    threading.Thread(target=write, daemon=True).start()
    if not done.wait(5):
        with open(metrics.temporary, "rb"):  # release the blocked writer so the test ends
            pass
        pytest.fail("the metrics write blocked on a FIFO at its temporary name")
    assert "transparent_udp_forwarder_flows 5\n" in (tmp_path / "forwarder.prom").read_text()
