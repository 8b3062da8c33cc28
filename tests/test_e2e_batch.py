"""The batched path end to end: datagrams queued while the forwarder is paused leave in one recvmmsg and,
per flow, one sendmmsg; a datagram the firewall refuses in the middle of such a run is counted, and the
run's other datagrams still arrive, in order.

    client 198.51.100.10 --- 198.51.100.1 [host: forwarder] 192.0.2.1 --- 192.0.2.2 backend
"""

import os
import signal

import pytest
from e2e_helpers import send_path

from netlab import Lab, expect, start_forwarder
from netlab.lab.nft import apply_ruleset, counter_packets
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged
__all__ = ["send_path"]  # the fixture: the batched path runs on both send paths

# Drops (EPERM for the sender) UDP datagrams to the backend whose payload starts with "X".
REFUSE_X = """table inet refuse_x {
    chain output {
        type filter hook output priority filter; policy accept;
        ip daddr 192.0.2.2 udp dport 27000 @th,64,8 0x58 drop
    }
}
"""


def test_a_refused_datagram_in_the_middle_of_a_batch_costs_only_itself(
    lab: Lab, send_path: list[str]
) -> None:
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    forwarder = start_forwarder(
        lab["host"], ["198.51.100.1:27000"], ["192.0.2.2:27000"], args=["--stats-interval", "0.2", *send_path]
    )
    client = lab["client"]
    client.send_fast(src="198.51.100.10", sport=4242, dst="198.51.100.1", dport=27000, payloads=[b"open"])
    backend.datagram(src="198.51.100.10:4242", payload=b"open").arrives(within=5)
    forwarder.wait_ready()
    apply_ruleset(lab["host"], REFUSE_X)

    payloads = [b"ok%02d" % n for n in range(20)] + [b"X"] + [b"ok%02d" % n for n in range(21, 41)]
    os.kill(forwarder.process.pid, signal.SIGSTOP)  # let the burst queue up: it is then read as batches
    try:
        client.send_fast(src="198.51.100.10", sport=4242, dst="198.51.100.1", dport=27000, payloads=payloads)
    finally:
        os.kill(forwarder.process.pid, signal.SIGCONT)

    arrived = [p for p in payloads if p != b"X"]
    for payload in arrived:
        backend.datagram(src="198.51.100.10:4242", payload=payload).arrives(within=5)
    backend.nothing_else()
    assert [arrival.payload for arrival in backend.arrived[1:]] == arrived  # in order
    forwarder.wait_status(lambda value: "send-error:EPERM 1" in value and "since start 41 forwarded" in value)


# Counts what leaves the host toward the backend: a GSO run is one packet here (netfilter sees the run
# before it is cut into datagrams), a sendmmsg run one packet per datagram.
COUNT_OUTPUT = """table inet count_output {
    counter to_backend { }
    chain output {
        type filter hook output priority filter; policy accept;
        ip daddr 192.0.2.2 udp dport 27000 counter name "to_backend"
    }
}
"""


@pytest.mark.parametrize("gso", [False, True], ids=["sendmmsg", "gso"])
def test_with_gso_a_run_of_equal_sizes_leaves_as_one_send_and_arrives_as_every_datagram(
    lab: Lab, gso: bool
) -> None:
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    forwarder = start_forwarder(
        lab["host"],
        ["198.51.100.1:27000"],
        ["192.0.2.2:27000"],
        args=["--stats-interval", "0.2", *(["--gso"] if gso else [])],
    )
    client = lab["client"]
    client.send_fast(src="198.51.100.10", sport=4242, dst="198.51.100.1", dport=27000, payloads=[b"open"])
    backend.datagram(src="198.51.100.10:4242", payload=b"open").arrives(within=5)
    forwarder.wait_ready()
    apply_ruleset(lab["host"], COUNT_OUTPUT)

    # Runs of equal sizes, a shorter one closing a run, an empty one and a lone large one in between.
    payloads = (
        [b"a%03d" % n for n in range(30)] + [b"s"] + [b""] + [b"L" * 1400] + [b"b%03d" % n for n in range(30)]
    )
    os.kill(forwarder.process.pid, signal.SIGSTOP)  # let the burst queue up: it is then read as batches
    try:
        client.send_fast(src="198.51.100.10", sport=4242, dst="198.51.100.1", dport=27000, payloads=payloads)
    finally:
        os.kill(forwarder.process.pid, signal.SIGCONT)

    for payload in payloads:
        backend.datagram(src="198.51.100.10:4242", payload=payload).arrives(within=5)
    backend.nothing_else()
    assert [arrival.payload for arrival in backend.arrived[1:]] == payloads  # intact, in order
    forwarder.wait_status(lambda value: f"since start {len(payloads) + 1} forwarded, 0 dropped" in value)
    packets = counter_packets(lab["host"], "inet", "count_output", "to_backend")
    if gso:
        assert packets < len(payloads) / 4, f"{packets} packets left for {len(payloads)} datagrams"
    else:
        assert packets == len(payloads)


def test_with_gso_a_run_of_datagrams_larger_than_the_mtu_still_arrives_whole(lab: Lab) -> None:
    # GSO segments must fit the path MTU: the kernel refuses the run (EMSGSIZE) and the forwarder sends
    # it datagram by datagram (fragmented), then stops trying GSO for that size.
    lab.build(seed_deployment())
    backend = expect(lab["backend"], port=27000)
    forwarder = start_forwarder(
        lab["host"], ["198.51.100.1:27000"], ["192.0.2.2:27000"], args=["--stats-interval", "0.2", "--gso"]
    )
    client = lab["client"]
    client.send_fast(src="198.51.100.10", sport=4242, dst="198.51.100.1", dport=27000, payloads=[b"open"])
    backend.datagram(src="198.51.100.10:4242", payload=b"open").arrives(within=5)
    forwarder.wait_ready()

    payloads = [bytes([65 + n]) * 3000 for n in range(2)] * 5
    os.kill(forwarder.process.pid, signal.SIGSTOP)
    try:
        client.send_fast(src="198.51.100.10", sport=4242, dst="198.51.100.1", dport=27000, payloads=payloads)
    finally:
        os.kill(forwarder.process.pid, signal.SIGCONT)

    for payload in payloads:
        backend.datagram(src="198.51.100.10:4242", payload=payload).arrives(within=5)
    assert [arrival.payload for arrival in backend.arrived[1:]] == payloads
    forwarder.wait_status(lambda value: f"since start {len(payloads) + 1} forwarded, 0 dropped" in value)
