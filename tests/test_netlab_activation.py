"""The forwarder under systemd-socket-activate: notifications with timestamps, lab-held sockets passed
through the activator, restarts that keep the sockets (and what waits in them).

client 198.51.100.10 --- 198.51.100.1 [host: forwarder] 192.0.2.1 --- 192.0.2.2 backend   (seed.toml)
"""

import socket
import time

import pytest

from netlab import Lab, start_forwarder
from netlab.errors import LabTimeoutError
from netlab.service.activation import hold_listen_sockets
from netlab.service.notify import NotifyReceiver
from netlab.topology.shipped import seed_deployment
from netlab.traffic.expect import expect

pytestmark = pytest.mark.privileged

LISTEN = ["198.51.100.1:27000", "198.51.100.1:27003"]


def send(lab: Lab, port: int, payload: bytes) -> None:
    lab["client"].send_fast(src="203.0.113.7", sport=4242, dst="198.51.100.1", dport=port, payloads=[payload])


def test_notifications_are_recorded_in_order_with_timestamps(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    before = time.monotonic()
    forwarder = start_forwarder(
        lab["host"], LISTEN[:1], ["192.0.2.2:27000"], args=["--stats-interval", "0.2"]
    )
    send(lab, 27000, b"wake")
    ready = forwarder.wait_ready()
    backend.datagram(src="203.0.113.7:4242", payload=b"wake").arrives()
    status = forwarder.wait_status(lambda text: "forwarded" in text)
    assert forwarder.stop() == 0
    stopping = forwarder.notify.wait_stopping()

    assert before < ready.time <= status.time <= stopping.time
    assert [event.key for event in forwarder.notify.events][:2] == ["READY", "STATUS"]


def test_watchdog_keepalives_can_be_awaited(lab: Lab) -> None:
    receiver = NotifyReceiver(lab.socket_dir / "watchdog.sock")
    lab.defer(receiver.close)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as service:
        service.sendto(b"WATCHDOG=1", str(receiver.path))
    assert receiver.wait_watchdog(timeout=5).value == "1"
    with pytest.raises(LabTimeoutError, match=r"no STOPPING=1 .* received so far:\n    WATCHDOG=1$"):
        receiver.wait_stopping(timeout=0.05)


def test_the_forwarder_serves_sockets_the_lab_holds_with_their_names(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    held = hold_listen_sockets(lab["host"], LISTEN)
    forwarder = start_forwarder(
        lab["host"], [], ["192.0.2.2:27000", "192.0.2.2:27000"], sockets=held, fdnames=["game", "query"]
    )
    send(lab, 27003, b"second socket")
    forwarder.wait_ready()
    backend.datagram(src="203.0.113.7:4242", payload=b"second socket").arrives().and_nothing_else()
    log = forwarder.process.output()
    assert "Received 2 descriptors via the environment." in log
    assert "game -> 192.0.2.2:27000, query -> 192.0.2.2:27000" in log


def test_a_datagram_sent_while_the_forwarder_is_down_is_forwarded_after_a_restart(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    held = hold_listen_sockets(lab["host"], LISTEN[:1])
    forwarder = start_forwarder(lab["host"], [], ["192.0.2.2:27000"], sockets=held)
    send(lab, 27000, b"before")
    forwarder.wait_ready()
    backend.datagram(payload=b"before").arrives()
    assert forwarder.stop() == 0

    send(lab, 27000, b"while down")  # waits in the socket the lab holds
    forwarder.restart()
    forwarder.wait_ready()
    backend.datagram(src="203.0.113.7:4242", payload=b"while down").arrives().and_nothing_else()


def test_without_held_sockets_a_datagram_sent_while_down_is_lost(lab: Lab) -> None:
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    forwarder = start_forwarder(lab["host"], LISTEN[:1], ["192.0.2.2:27000"])
    send(lab, 27000, b"before")
    forwarder.wait_ready()
    backend.datagram(payload=b"before").arrives()
    forwarder.stop()

    send(lab, 27000, b"while down")  # nobody holds the port: the host answers port unreachable
    forwarder.restart()
    send(lab, 27000, b"after")
    forwarder.wait_ready()
    backend.datagram(payload=b"after").arrives().and_nothing_else()
