"""Zero-loss restart: the lab holds the listening socket, as PID 1 holds a .socket unit's, so restarting the
forwarder while a sender runs below capacity loses nothing: what arrives during the restart waits in the
socket for the next run. Proven by counts: datagrams leaving the client (nftables, output hook) against
datagrams arriving at the backend (nftables, prerouting), with the host's receive-buffer overflows at zero.

client 198.51.100.10 --- 198.51.100.1 [host: forwarder, lab-held socket] 192.0.2.1 --- 192.0.2.2 backend
"""

import re
import socket
import time

import pytest
from e2e_helpers import blaster_summary, count_arrivals, count_departures, start_blaster

from forwarder.io.linux import SO_RCVBUFFORCE
from netlab import Lab, start_forwarder
from netlab.lab.node import LabNode
from netlab.service.activation import hold_listen_sockets
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged

RECEIVE_BUFFER = 8 << 20  # as ReceiveBuffer= in the socket unit: room for the seconds a restart takes
RESTARTS = 3
RATE = 4000  # datagrams per second: far below what the forwarder handles


def rcvbuf_errors(node: LabNode) -> int:
    lines = node.check(["cat", "/proc/net/snmp"]).splitlines()
    udp = [line.split()[1:] for line in lines if line.startswith("Udp:")]
    return int(dict(zip(udp[0], udp[1], strict=True))["RcvbufErrors"])


def test_restarting_the_forwarder_under_load_loses_no_datagram(lab: Lab) -> None:
    lab.build(seed_deployment())
    held = hold_listen_sockets(lab["host"], ["198.51.100.1:27000"])
    held.sockets[0].setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    sent = count_departures(lab["client"], 27000)
    arrived = count_arrivals(lab["backend"], 27000)
    overflows_before = rcvbuf_errors(lab["host"])
    forwarder = start_forwarder(
        lab["host"], [], ["192.0.2.2:27000"], sockets=held, args=["--stats-interval", "0.2"]
    )

    blaster = start_blaster(
        lab["client"],
        src="198.51.100.10",
        dst="198.51.100.1",
        dport=27000,
        flows=100,
        rate=RATE,
        duration=60,
        count=RATE * 6,
    )
    forwarder.wait_ready()
    exit_codes = []
    for _ in range(RESTARTS):
        # Restart only once this run has forwarded something: every restart happens mid-stream.
        forwarder.wait_status(lambda status: re.match(r"[1-9]\d* datagrams forwarded", status) is not None)
        exit_codes.append(forwarder.restart())
        forwarder.wait_ready()
    summary = blaster_summary(blaster)
    # An interval without traffic after the sender finished: everything in the socket has been handled.
    forwarder.notify.wait_for(
        "STATUS",
        lambda status: status.startswith("0 datagrams forwarded"),
        after=time.monotonic(),
        timeout=30,
    )
    figures = {
        "sent": int(summary["sent"]),
        "counted_leaving": sent(),
        "arrived": arrived(),
        "restarts": RESTARTS,
    }
    print("restart:", figures)
    assert exit_codes == [0] * RESTARTS
    assert figures["sent"] == RATE * 6 == figures["counted_leaving"]
    assert figures["arrived"] == figures["sent"], figures  # 0 lost
    assert rcvbuf_errors(lab["host"]) == overflows_before
    assert forwarder.is_running()
