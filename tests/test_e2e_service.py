"""End-to-end: the forwarder as a systemd service under systemd-socket-activate in a lab node: READY=1,
periodic STATUS=, WATCHDOG=1, STOPPING=1 and exit 0 on SIGTERM/SIGINT, and the documented exit code for
each kind of bad start.

client 198.51.100.10 --- 198.51.100.1 [host: forwarder] 192.0.2.1 --- 192.0.2.2 backend
"""

import shutil
import signal
import socket
import sys

import pytest
from e2e_helpers import status_has

from netlab import Lab, start_forwarder
from netlab.lab.process import python_env
from netlab.lab.wait import wait_until
from netlab.service.activation import SOCKET_ACTIVATE, ForwarderUnderTest
from netlab.service.notify import NotifyReceiver
from netlab.service.procnet import udp_ports_bound
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged

LISTEN = "198.51.100.1:27000"


def wake(lab: Lab, payload: bytes = b"wake") -> socket.socket:
    """Send one datagram from the client to the listening address (which starts the forwarder)."""
    client = lab["client"].udp_socket("198.51.100.10", 0)
    client.sendto(payload, ("198.51.100.1", 27000))
    return client


def exit_code_after_wake(lab: Lab, forwarder: ForwarderUnderTest) -> tuple[int, str]:
    wake(lab)
    code = forwarder.process.wait(30)
    return code, forwarder.process.output()


def test_ready_status_watchdog_and_stopping_reach_the_notify_socket(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    forwarder = start_forwarder(
        lab["host"],
        [LISTEN],
        ["192.0.2.2:27000"],
        args=["--stats-interval", "0.2"],
        env={"WATCHDOG_USEC": "400000"},
    )
    client = wake(lab, b"one")
    forwarder.wait_ready()
    client.sendto(b"two", ("198.51.100.1", 27000))
    assert [backend.recvfrom(65535)[0] for _ in range(2)] == [b"one", b"two"]

    first = forwarder.notify.wait_for("WATCHDOG", "1", timeout=10)
    forwarder.notify.wait_for("WATCHDOG", "1", timeout=10, after=first.time + 0.001)
    forwarder.notify.wait_for("STATUS", status_has("since start 2 forwarded, 0 dropped; 1 flows"), timeout=10)
    assert forwarder.stop() == 0
    assert forwarder.notify.values("STOPPING") == ["1"]
    assert forwarder.notify.values("READY") == ["1"]
    assert "INFO forwarding 198.51.100.1:27000 -> 192.0.2.2:27000" in forwarder.process.output()


def test_sigint_also_stops_cleanly_with_exit_zero_and_log_level_hides_info(lab: Lab) -> None:
    lab.build(seed_deployment())
    forwarder = start_forwarder(lab["host"], [LISTEN], ["192.0.2.2:27000"], args=["--log-level", "warning"])
    wake(lab)
    forwarder.wait_ready()
    forwarder.process.signal(signal.SIGINT)
    assert forwarder.process.wait(10) == 0
    assert forwarder.notify.values("STOPPING") == ["1"]
    assert "INFO" not in forwarder.process.output()


def test_no_watchdog_pings_when_watchdog_pid_is_another_process(lab: Lab) -> None:
    lab.build(seed_deployment())
    forwarder = start_forwarder(
        lab["host"],
        [LISTEN],
        ["192.0.2.2:27000"],
        args=["--stats-interval", "0.1"],
        env={"WATCHDOG_USEC": "20000", "WATCHDOG_PID": "1"},
    )
    wake(lab)
    forwarder.wait_ready()
    first = forwarder.notify.wait_for("STATUS", status_has("since start"), timeout=10)
    forwarder.notify.wait_for("STATUS", status_has("since start"), timeout=10, after=first.time + 0.25)
    assert forwarder.notify.values("WATCHDOG") == []  # at 10 ms it would have pinged dozens of times


@pytest.mark.parametrize(
    ("args", "destinations", "code", "message"),
    [
        (["--frobnicate"], ["192.0.2.2:27000"], 64, "unrecognized arguments: --frobnicate"),
        ([], ["no-such-host.invalid:27000"], 68, "cannot resolve host 'no-such-host.invalid'"),
        ([], ["192.0.2.2:27000", "192.0.2.2:27001"], 78, "received 1 sockets but 2 destinations"),
        ([], ["198.51.100.1:27000"], 78, "expected a backend, not a loop"),
        ([], ["dns=192.0.2.2"], 78, "no socket is named 'dns'"),
    ],
)
def test_bad_start_exits_with_its_documented_code(
    lab: Lab, args: list[str], destinations: list[str], code: int, message: str
) -> None:
    lab.build(seed_deployment())
    forwarder = start_forwarder(lab["host"], [LISTEN], destinations, args=args)
    exit_code, log = exit_code_after_wake(lab, forwarder)
    assert (exit_code, message in log) == (code, True), log
    assert forwarder.notify.values("READY") == []


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
def test_without_cap_net_raw_and_cap_net_admin_the_activated_forwarder_exits_77_with_the_hint(
    lab: Lab,
) -> None:
    lab.build(seed_deployment())
    notify_path = lab.socket_dir / "notify-nocap.sock"
    receiver = NotifyReceiver(notify_path)
    lab.defer(receiver.close)
    drop = ["setpriv", "--inh-caps=-net_admin,-net_raw", "--bounding-set=-net_admin,-net_raw", "--"]
    argv = [
        SOCKET_ACTIVATE,
        "--datagram",
        "-l",
        LISTEN,
        "-E",
        f"NOTIFY_SOCKET={notify_path}",
        "-E",
        f"PYTHONPATH={python_env()['PYTHONPATH']}",
        *drop,
        sys.executable,
        "-m",
        "forwarder",
        "192.0.2.2:27000",
    ]
    process = lab["host"].run(argv, label="forwarder-nocap", env=python_env())
    wait_until(lambda: 27000 in udp_ports_bound(process.pid), "the activator to listen", 10)
    wake(lab)
    assert process.wait(30) == 77
    assert "AmbientCapabilities=CAP_NET_RAW" in process.output()  # the raw send path's, the default
    assert receiver.values("READY") == []


def test_listen_on_an_address_in_use_exits_71(lab: Lab) -> None:
    lab.build(seed_deployment())
    lab["host"].udp_socket("198.51.100.1", 27000)  # holds the port
    process = lab["host"].run(
        [sys.executable, "-m", "forwarder", "--listen", LISTEN, "192.0.2.2:27000"], env=python_env()
    )
    assert process.wait(30) == 71
    assert f"cannot listen on {LISTEN!r}: Address already in use" in process.output()


def test_listen_binds_its_own_sockets_and_forwards_without_systemd(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    receiver = NotifyReceiver(lab.socket_dir / "notify-listen.sock")
    lab.defer(receiver.close)
    process = lab["host"].run(
        [
            sys.executable,
            "-m",
            "forwarder",
            "--listen",
            LISTEN,
            "--listen",
            "198.51.100.1:27001",
            "192.0.2.2",
            "192.0.2.2",
        ],
        env=python_env({"NOTIFY_SOCKET": str(receiver.path)}),
    )
    receiver.wait_for("READY", "1", timeout=15, is_alive=lambda: process.returncode is None)
    client = lab["client"].udp_socket("198.51.100.10", 0)
    # DEST without a port: each socket forwards to 192.0.2.2 on its own port.
    client.sendto(b"listen", ("198.51.100.1", 27000))
    assert backend.recvfrom(65535) == (b"listen", client.getsockname())
    assert process.stop() == 0
