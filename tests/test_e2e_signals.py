"""End-to-end: what each signal does to a running forwarder under systemd-socket-activate with a
NOTIFY_SOCKET (the README's "Signals"): SIGTERM/SIGINT stop it cleanly; SIGUSR1 reports STATUS= and the
metrics file now; SIGHUP rewrites the metrics file and reloads nothing else; SIGUSR2 and SIGALRM are logged
and ignored. None of them may end the process without STOPPING=1 and a last report. And the STATUS= line
names the time that really passed (a SIGSTOP), and is logged when there is no service manager to send it to.

client 198.51.100.10 --- 198.51.100.1 [host: forwarder] 192.0.2.1 --- 192.0.2.2 backend
"""

import re
import signal
import time

import pytest
from e2e_helpers import status_has

from netlab import Lab, start_forwarder
from netlab.lab.wait import wait_until
from netlab.service.activation import ForwarderUnderTest
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged

LISTEN = "198.51.100.1:27000"
# An interval no test waits for: every report a test sees was asked for by a signal (or the stop).
NEVER = ["--stats-interval", "3600"]


class Running:
    """A forwarder in the seed lab with a client and a backend, and its metrics file."""

    def __init__(self, lab: Lab, args: list[str]) -> None:
        lab.build(seed_deployment())
        self.backend = lab["backend"].udp_socket("192.0.2.2", 27000)
        self.backend.settimeout(10)
        self.metrics = lab.workdir / "textfile" / "forwarder.prom"
        self.metrics.parent.mkdir()
        self.forwarder: ForwarderUnderTest = start_forwarder(
            lab["host"], [LISTEN], ["192.0.2.2:27000"], args=[*args, "--metrics-file", str(self.metrics)]
        )
        self.client = lab["client"].udp_socket("198.51.100.10", 0)

    def forward(self, payload: bytes) -> None:
        """Send `payload` from the client and see it arrive at the backend."""
        self.client.sendto(payload, ("198.51.100.1", 27000))
        assert self.backend.recvfrom(65535)[0] == payload

    def signal(self, signum: int, logged: str) -> None:
        """Send `signum` and wait until the forwarder logs `logged` (it has acted on it)."""
        self.forwarder.process.signal(signum)
        wait_until(lambda: logged in self.forwarder.process.output(), f"the log line {logged!r}", 10)

    def stops_cleanly(self) -> None:
        """SIGTERM: exit 0 after a last STATUS= with the totals, and one STOPPING=1."""
        assert self.forwarder.stop() == 0
        assert self.forwarder.notify.values("STOPPING") == ["1"]
        assert "Traceback" not in self.forwarder.process.output()


def forwarded_total(text: str) -> int:
    match = re.search(r"^transparent_udp_forwarder_datagrams_forwarded_total\{[^}]*\} (\d+)$", text, re.M)
    assert match is not None, text
    return int(match.group(1))


def test_sigusr1_reports_status_and_the_metrics_file_now_and_keeps_forwarding(lab: Lab) -> None:
    running = Running(lab, NEVER)
    running.forward(b"one")
    running.forward(b"two")
    running.forwarder.wait_ready()
    assert not running.metrics.exists()

    running.signal(signal.SIGUSR1, "SIGUSR1: reporting STATUS= and the metrics file now")

    running.forwarder.notify.wait_for("STATUS", status_has("since start 2 forwarded, 0 dropped; 1 flows"))
    assert forwarded_total(running.metrics.read_text()) == 2
    running.forward(b"three")
    running.stops_cleanly()
    assert running.forwarder.notify.values("STATUS")[-2].startswith("1 datagrams forwarded in the last ")
    assert forwarded_total(running.metrics.read_text()) == 3


def test_sighup_rewrites_the_metrics_file_says_nothing_else_reloads_and_keeps_forwarding(lab: Lab) -> None:
    running = Running(lab, NEVER)
    running.forward(b"one")
    running.forwarder.wait_ready()
    assert not running.metrics.exists()

    running.signal(signal.SIGHUP, "SIGHUP: nothing else is reloaded")

    assert f"SIGHUP: metrics file {str(running.metrics)!r} rewritten" in running.forwarder.process.output()
    assert forwarded_total(running.metrics.read_text()) == 1
    assert [value for value in running.forwarder.notify.values("STATUS") if "since start" in value] == []
    running.forward(b"two")
    running.stops_cleanly()
    assert forwarded_total(running.metrics.read_text()) == 2


@pytest.mark.parametrize("signum", [signal.SIGUSR2, signal.SIGALRM])
def test_sigusr2_and_sigalrm_are_logged_and_ignored(lab: Lab, signum: signal.Signals) -> None:
    running = Running(lab, NEVER)
    running.forward(b"one")
    running.forwarder.wait_ready()

    running.signal(signum, f"{signum.name} ignored (SIGTERM or SIGINT stops the forwarder)")

    assert running.forwarder.is_running()
    running.forward(b"two")
    assert running.forwarder.notify.values("STOPPING") == []
    running.stops_cleanly()
    assert "since start 2 forwarded, 0 dropped" in running.forwarder.notify.values("STATUS")[-2]


def test_after_a_sigstop_the_status_line_names_the_time_that_really_passed(lab: Lab) -> None:
    running = Running(lab, ["--stats-interval", "0.5"])
    running.forward(b"one")
    running.forwarder.wait_ready()
    first = running.forwarder.notify.wait_for("STATUS", status_has("since start"))

    running.forwarder.process.signal(signal.SIGSTOP)
    try:
        time.sleep(2)  # the stall itself is what is tested: nothing to wait for
    finally:
        running.forwarder.process.signal(signal.SIGCONT)

    def long(value: str) -> bool:
        match = re.search(r"in the last ([0-9.]+) seconds", value)
        return match is not None and float(match.group(1)) >= 1.9

    running.forwarder.notify.wait_for("STATUS", long, after=first.time)
    running.stops_cleanly()


def test_without_a_notify_socket_the_status_line_is_logged_every_interval(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    forwarder = start_forwarder(
        lab["host"],
        [LISTEN],
        ["192.0.2.2:27000"],
        args=["--stats-interval", "0.2"],
        env={"NOTIFY_SOCKET": ""},
    )
    client = lab["client"].udp_socket("198.51.100.10", 0)
    client.sendto(b"one", ("198.51.100.1", 27000))
    assert backend.recvfrom(65535)[0] == b"one"

    def logged() -> int:
        return len(
            re.findall(
                r"INFO status: .* since start 1 forwarded, 0 dropped; 1 flows\.", forwarder.process.output()
            )
        )

    wait_until(lambda: logged() >= 2, "two STATUS lines in the log", 10)
    assert forwarder.stop() == 0
    assert forwarder.notify.values("READY") == []
