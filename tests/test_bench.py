"""`netlab bench` in its smoke form: every contender runs, is counted at the backend, and gets its ratios.

No speed is asserted here (machines are noisy; figures come from the shipped benchmark, not from tests).
"""

import io
import json

import pytest

from netlab.bench import Case, Run, Settings, open_flows, run_bench, summarize
from netlab.blaster import udp_packet


def test_summary_ratios_are_relative_to_kernel_dnat_with_rps_and_to_the_per_datagram_reference() -> None:
    case = Case(64, 1)
    runs = [
        Run("kernel-dnat+rps", case, offered=1000, delivered=1000, seconds=1.0, busy_cpu_seconds=0.5),
        Run("per-datagram", case, offered=1000, delivered=100, seconds=1.0, busy_cpu_seconds=0.5),
        Run("forwarder", case, offered=1000, delivered=500, seconds=1.0, busy_cpu_seconds=0.5),
        Run("forwarder", case, offered=1000, delivered=700, seconds=1.0, busy_cpu_seconds=0.5),
        Run("forwarder", case, offered=1000, delivered=600, seconds=1.0, busy_cpu_seconds=0.5),
    ]
    forwarder = next(summary for summary in summarize(runs) if summary.contender == "forwarder")
    assert forwarder.median_delivered_per_s == 600
    assert (forwarder.min_delivered_per_s, forwarder.max_delivered_per_s) == (500, 700)
    assert forwarder.ratio_to_kernel_dnat_rps == pytest.approx(0.6)
    assert forwarder.ratio_to_per_datagram == pytest.approx(6.0)
    assert forwarder.median_loss == pytest.approx(0.4)


def test_the_flow_count_is_read_from_the_end_of_the_status_line() -> None:
    status = "5 datagrams forwarded in the last 1 seconds, 0 dropped; since start 9 forwarded, 0 dropped; "
    status += "301 flows."
    assert open_flows(status) == 301
    assert open_flows("Up and running.") == 0


def test_blaster_packets_carry_the_flow_ports_and_the_payload_length() -> None:
    packet = udp_packet("198.51.100.10", "198.51.100.1", 10001, 27000, bytes(64))
    assert len(packet) == 20 + 8 + 64
    assert packet[20:24] == (10001).to_bytes(2, "big") + (27000).to_bytes(2, "big")
    assert int.from_bytes(packet[2:4], "big") == len(packet)


@pytest.mark.privileged
@pytest.mark.slow
def test_quick_bench_measures_every_contender_and_reports_json() -> None:
    out = io.StringIO()
    settings = Settings(cases=[Case(64, 100)], runs=1, duration=0.2, memory_flows=300)
    assert run_bench(settings, out=out, progress=io.StringIO(), as_json=True) == 0
    document = json.loads(out.getvalue())
    contenders = {case["contender"]: case for case in document["cases"]}
    assert set(contenders) == {
        "kernel-dnat+rps",
        "kernel-dnat",
        "per-datagram",
        "forwarder",
        "forwarder-single",
        "forwarder-relay",
    }
    for name, case in contenders.items():
        assert case["median_delivered_per_s"] > 0, name
        assert case["ratio_to_kernel_dnat_rps"] is not None, name
        assert case["ratio_to_per_datagram"] is not None, name
    assert document["sender_solo_per_s"]["64 B x 100 flows"] > 0
    memory = document["flow_memory"]
    assert memory["flows"] == 300
    assert memory["rss_kib_after"] >= memory["rss_kib_before"] > 0
