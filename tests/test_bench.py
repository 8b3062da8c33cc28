"""`netlab bench`: every available contender runs, is counted at the backend (or, echoed, at the client),
and gets its ratios; peers whose package is missing are skipped with a line; `--contenders` parsing.

No speed is asserted here (machines are noisy; figures come from the shipped benchmark, not from tests).
"""

import io
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netlab.bench import contenders as contenders_module
from netlab.bench.contenders import CONTENDERS, FORWARDER_ARGS, PEERS, checkout_program, nginx_config
from netlab.bench.fixed_rate import echo_ceilings, fixed_rate_table, parse_rates, summarize_fixed_rate
from netlab.bench.lab import Case, Contender, Run, session_cpu_seconds
from netlab.bench.memory import MEASURED_PATHS, FlowMemory
from netlab.bench.report import text_report
from netlab.bench.run import Settings, available, parse_contenders, run_bench
from netlab.bench.stats import summarize
from netlab.cli.main import main
from netlab.errors import UsageError
from netlab.programs.blaster import (
    PROXY_V2_SIGNATURE,
    BlastOptions,
    flow_payload,
    internet_checksum,
    proxy_v2_header,
    udp_packet,
)
from netlab.service.status import open_flows

ONE_FLOW = Case(64, 1)
ECHO_1000 = Case(64, 1000, echo=True)


def run(name: str, delivered: int, case: Case = ONE_FLOW) -> Run:
    return Run(name, case, offered=1000, delivered=delivered, seconds=1.0, busy_cpu_seconds=0.5)


def test_summary_ratios_are_relative_to_kernel_dnat_with_rps_and_to_the_per_datagram_reference() -> None:
    runs = [
        run("kernel-dnat+rps", 1000),
        run("per-datagram", 100),
        run("forwarder", 500),
        run("forwarder", 700),
        run("forwarder", 600),
    ]
    forwarder = next(summary for summary in summarize(runs) if summary.contender == "forwarder")
    assert forwarder.median_delivered_per_s == 600
    assert (forwarder.min_delivered_per_s, forwarder.max_delivered_per_s) == (500, 700)
    assert forwarder.ratio_to_kernel_dnat_rps == pytest.approx(0.6)
    assert forwarder.ratio_to_per_datagram == pytest.approx(6.0)
    assert forwarder.median_loss == pytest.approx(0.4)


def test_summary_ratios_to_each_peer_are_taken_within_the_same_case() -> None:
    echo = Case(64, 1, echo=True)
    runs = [run("forwarder", 600), run("nginx", 300), run("go-mmproxy", 200), run("nginx", 100, echo)]
    summaries = summarize(runs)
    forwarder = next(s for s in summaries if s.contender == "forwarder")
    assert forwarder.ratio_to_peers == pytest.approx({"nginx": 2.0, "go-mmproxy": 3.0})
    echoed_nginx = next(s for s in summaries if s.case == echo)
    assert echoed_nginx.ratio_to_peers == {"nginx": 1.0}  # not divided by the forward-only case's figures


def test_summaries_list_contenders_in_the_order_of_the_contender_table() -> None:
    runs = [run(name, 100) for name in reversed(CONTENDERS)]
    assert [summary.contender for summary in summarize(runs)] == list(CONTENDERS)


def test_the_text_report_has_a_ratio_column_per_peer_measured_and_says_what_was_skipped() -> None:
    summaries = summarize([run("forwarder", 600), run("nginx", 300)])
    report = text_report(summaries, {"64 B x 1 flow": 1000.0}, [], [], {"go-mmproxy": "go-mmproxy not found"})
    rates = report.splitlines()[0]
    assert tuple(rates.split()[-2:]) == ("core", "own")
    ratios = next(line for line in report.splitlines() if line.startswith("ratios of delivered/s"))
    assert "x nginx" in ratios
    assert "x go-mmproxy" not in ratios
    assert "skipped go-mmproxy: go-mmproxy not found" in report.splitlines()


def test_the_memory_lines_name_the_send_path_and_its_descriptors_per_flow() -> None:
    raw = FlowMemory(1000, 10_000, 10_500, 400, "forwarder", 12, 12)
    sockets = FlowMemory(1000, 10_000, 10_800, 4_000, "forwarder-sockets", 12, 1012)

    lines = text_report([], {}, [], [raw, sockets]).splitlines()[-2:]

    assert lines[0].startswith("forwarder: 1000 open flows, 12 -> 12 file descriptors (0.00/flow): RSS")
    assert lines[1].startswith("forwarder-sockets: 1000 open flows, 12 -> 1012 file descriptors (1.00/flow)")
    assert "(+0.5 MiB, 512 B/flow)" in lines[0]  # 500 KiB over 1000 flows
    assert "kernel slab +3.9 MiB (4096 B/flow)" in lines[1]


def test_the_per_client_sockets_path_is_raced_and_measured_beside_the_default_configuration() -> None:
    assert {"forwarder", "forwarder-sockets"} <= set(CONTENDERS)
    assert MEASURED_PATHS == {"forwarder": (), "forwarder-sockets": ("--send-path", "sockets")}
    assert "--send-path" not in FORWARDER_ARGS  # the forwarder contender runs the default configuration


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


def test_blaster_packets_carry_a_valid_udp_checksum() -> None:
    packet = udp_packet("198.51.100.10", "198.51.100.1", 10001, 27000, b"odd length payload!")
    udp = packet[20:]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_UDP, len(udp))
    assert udp[6:8] != b"\0\0"
    assert internet_checksum(pseudo + udp) == 0  # the receiver's check: the sum over all of it is 0xFFFF


def test_the_proxy_v2_header_names_the_datagrams_source_and_destination() -> None:
    header = proxy_v2_header("198.51.100.10", 10001, "198.51.100.1", 27000)
    assert header[:12] == PROXY_V2_SIGNATURE
    assert header[12:16] == bytes([0x21, 0x12]) + (12).to_bytes(2, "big")  # v2 PROXY, INET DGRAM, 12 bytes
    assert header[16:28] == socket.inet_aton("198.51.100.10") + socket.inet_aton(
        "198.51.100.1"
    ) + bytes.fromhex("27116978")
    assert len(header) == 28


def test_with_proxy_v2_each_flows_payload_starts_with_a_header_naming_its_own_port() -> None:
    options = BlastOptions(src="198.51.100.10", dst="198.51.100.1", dport=27000, proxy_v2=True)
    payload = flow_payload(options, 10007, b"data")
    assert payload == proxy_v2_header("198.51.100.10", 10007, "198.51.100.1", 27000) + b"data"
    plain = BlastOptions(src="198.51.100.10", dst="198.51.100.1", dport=27000)
    assert flow_payload(plain, 10007, b"data") == b"data"


def test_contenders_parse_in_order_once_each() -> None:
    assert parse_contenders("nginx, forwarder,nginx") == ["nginx", "forwarder"]


@pytest.mark.parametrize("text", ["nginx,bogus", "", "forwarder,"])
def test_an_unknown_contender_is_a_usage_error_naming_it_and_the_choices(text: str) -> None:
    bad = next(name.strip() for name in text.split(",") if name.strip() not in CONTENDERS)
    with pytest.raises(UsageError, match=f"unknown contender {bad!r}") as error:
        parse_contenders(text)
    assert all(name in str(error.value) for name in CONTENDERS)


def test_the_bench_help_lists_every_contender(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # argparse would wrap the list, also at hyphens
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    listed = text.partition("comma-separated:")[2].partition("(default")[0]
    assert [name.strip() for name in listed.split(",")] == list(CONTENDERS)


def test_the_bench_command_exits_64_on_an_unknown_contender(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--contenders", "forwarder,nginxx"]) == os.EX_USAGE
    message = capsys.readouterr().err
    assert "'nginxx'" in message
    assert "go-mmproxy" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "value"),
    [("--runs", "0"), ("--runs", "-2"), ("--duration", "-1"), ("--duration", "0"), ("--duration", "nan")],
)
def test_the_bench_command_exits_64_on_runs_or_a_duration_it_could_never_measure(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: 0 runs measured nothing and exited 0; a negative duration measured for ever.
    assert main(["bench", option, value]) == os.EX_USAGE
    message = capsys.readouterr().err
    assert f"{option} {float(value) if option == '--duration' else int(value)}" in message
    assert len(message.splitlines()) == 1


def test_a_contender_whose_package_is_missing_is_skipped_with_a_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    absent = Contender(
        "nginx", contenders_module.nginx, requires=("/nonexistent/nginx",), package="nginx-light"
    )
    monkeypatch.setitem(contenders_module.CONTENDERS, "nginx", absent)
    progress = io.StringIO()
    names, skipped = available(["forwarder", "nginx"], progress)
    assert names == ["forwarder"]
    assert skipped == {"nginx": "/nonexistent/nginx not found (install the Debian package nginx-light)"}
    assert progress.getvalue() == f"skipping nginx: {skipped['nginx']}\n"


def test_echo_cases_are_run_only_by_contenders_that_relay_replies() -> None:
    echo, plain = Case(64, 1, echo=True), Case(64, 1)
    relaying = {name for name, contender in CONTENDERS.items() if contender.runs(echo)}
    assert relaying == {
        "kernel-dnat+rps",
        "kernel-dnat",
        "forwarder-relay",
        "forwarder-tproxy",
        "nginx",
        "go-mmproxy",
    }
    assert all(contender.runs(plain) for contender in CONTENDERS.values())


def test_nginx_keeps_sessions_for_the_run_and_binds_the_clients_address() -> None:
    config = nginx_config("/run/x")
    assert "proxy_bind $remote_addr:$remote_port transparent;" in config
    assert "proxy_responses" not in config  # 0 would end every session after one datagram
    assert "worker_processes 1;" in config
    assert "user root;" in config


def test_session_cpu_counts_the_busy_descendants_of_a_session() -> None:
    # The leader sleeps; a child of it (same session, as nginx's worker is) burns 0.3 s of CPU, then sleeps.
    burn = (
        "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)"
    )
    leader = (
        f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {burn!r}])\ntime.sleep(30)"
    )
    process = subprocess.Popen([sys.executable, "-c", leader], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while session_cpu_seconds(process.pid) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)  # sampling a counter that grows
        assert session_cpu_seconds(process.pid) >= 0.3
    finally:
        os.killpg(process.pid, 9)
        process.wait()


@pytest.mark.privileged
@pytest.mark.slow
def test_quick_bench_measures_every_available_contender_and_reports_json() -> None:
    out, progress = io.StringIO(), io.StringIO()
    cases = [Case(64, 100), Case(64, 10, echo=True)]
    settings = Settings(cases=cases, runs=1, duration=0.2, memory_flows=300, echo_rates=[20_000.0])
    assert run_bench(settings, out=out, progress=progress, as_json=True) == 0
    document = json.loads(out.getvalue())
    skipped = document["skipped"]
    for name in skipped:
        assert f"skipping {name}: " in progress.getvalue()
    measured = {(case["contender"], case["case"]["echo"]): case for case in document["cases"]}
    expected = {(name, False) for name in CONTENDERS if name not in skipped}
    expected |= {(name, True) for name, c in CONTENDERS.items() if c.relays_replies and name not in skipped}
    assert set(measured) == expected
    peers = {peer for peer in PEERS if peer not in skipped}
    # One run per case: each case's figures are its run's, and its run's are what was sent and counted.
    runs = {(run["contender"], run["case"]["echo"]): run for run in document["runs"]}
    assert set(runs) == set(measured)
    for key, case in measured.items():
        run = runs[key]
        # Something arrived, and never more than was sent (a counter that counted anything else would).
        assert 0 < run["delivered"] <= run["offered"], key
        assert case["median_delivered_per_s"] == pytest.approx(run["delivered"] / run["seconds"]), key
        assert case["median_cpu_us_per_datagram"] == pytest.approx(
            run["busy_cpu_seconds"] / run["delivered"] * 1e6
        ), key
    for (name, _), case in measured.items():
        assert case["ratio_to_kernel_dnat_rps"] is not None, name
        assert set(case["ratio_to_peers"]) == peers, name
    for name, case in measured.items():
        if name[1] is False:
            assert case["ratio_to_per_datagram"] is not None, name
    userspace = [run for run in document["runs"] if CONTENDERS[run["contender"]].userspace]
    # A userspace contender's own CPU time is part of the machine's busy time it was measured in.
    for run in userspace:
        assert 0 < run["process_cpu_seconds"] <= run["busy_cpu_seconds"] + 0.05, run["contender"]
    echoed = [run for run in document["runs"] if run["case"]["echo"]]
    # A reply only comes back for a datagram that reached the backend, which only got what was sent.
    assert all(0 < run["delivered"] <= run["forwarded"] <= run["offered"] for run in echoed)
    assert document["sender_solo_per_s"]["64 B x 100 flows"] > 0
    rated = {entry["contender"]: entry for entry in document["fixed_rate_echo"]}
    assert set(rated) == {name for name, c in CONTENDERS.items() if c.relays_replies and name not in skipped}
    for name, entry in rated.items():
        assert entry["offered_per_s"] == 20_000.0, name
        assert entry["median_delivered_per_s"] > 0, name
        assert entry["median_cpu_us_per_reply"] > 0, name
    ceilings = {entry["contender"]: entry["replies_per_s"] for entry in document["echo_ceilings"]}
    assert set(ceilings) == set(rated)
    # Both send paths' flows are measured: the raw path holds no descriptor per flow, the other one each.
    memory = document["flow_memory"]
    assert set(memory) == {"forwarder", "forwarder-sockets"}
    for measured in memory.values():
        assert 0 < measured["flows"] <= 300  # the flows the blast opened (all unless datagrams were lost)
        assert measured["rss_kib_after"] >= measured["rss_kib_before"] > 0
    assert memory["forwarder"]["fds_after"] == memory["forwarder"]["fds_before"]
    sockets = memory["forwarder-sockets"]
    assert sockets["fds_after"] - sockets["fds_before"] == sockets["flows"]


def echo_run(name: str, rate: float, delivered: int, own: float | None, case: Case = ECHO_1000) -> Run:
    return Run(
        name,
        case,
        offered=int(rate),
        delivered=delivered,
        seconds=1.0,
        busy_cpu_seconds=1.0,
        rate_limit=rate,
        core_cpu_seconds=0.5,
        process_cpu_seconds=own,
    )


def test_full_bench_offers_echo_cases_fixed_rates_of_50k_and_100k_and_quick_none() -> None:
    assert {50_000.0, 100_000.0} <= set(Settings.full().echo_rates)
    assert any(case.echo for case in Settings.full().cases)
    assert Settings.quick().echo_rates == []


@pytest.mark.parametrize(("text", "rates"), [("50k,100000", [50_000.0, 100_000.0]), ("2.5K, 2.5k", [2500.0])])
def test_echo_rates_parse_with_a_k_suffix_in_order_once_each(text: str, rates: list[float]) -> None:
    assert parse_rates(text) == rates


@pytest.mark.parametrize("text", ["50k,fast", "0", "-5k", "", "nan", "inf"])
def test_a_bad_echo_rate_is_a_usage_error_naming_it(text: str) -> None:
    with pytest.raises(UsageError, match=r"bad echo rate .*expected positive datagrams/s"):
        parse_rates(text)


def test_the_bench_command_exits_64_on_a_bad_echo_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--echo-rates", "50k,lots"]) == os.EX_USAGE
    message = capsys.readouterr().err
    assert "'lots'" in message
    assert len(message.splitlines()) == 1


def test_fixed_rate_runs_are_summarized_per_case_rate_and_contender_with_cpu_per_reply() -> None:
    runs = [
        echo_run("nginx", 50_000, 50_000, 1.0),
        echo_run("nginx", 50_000, 40_000, 0.8),
        echo_run("nginx", 50_000, 45_000, 0.9),
        echo_run("forwarder-relay", 50_000, 25_000, 0.5),
        echo_run("nginx", 100_000, 80_000, 1.6),
        echo_run("kernel-dnat+rps", 100_000, 100_000, None),
        echo_run("nginx", 0, 60_000, 1.0),  # a flat-out run: not a fixed-rate one
    ]
    rated = {(s.contender, s.offered_per_s): s for s in summarize_fixed_rate(runs)}
    assert set(rated) == {
        ("nginx", 50_000),
        ("forwarder-relay", 50_000),
        ("nginx", 100_000),
        ("kernel-dnat+rps", 100_000),
    }
    nginx = rated[("nginx", 50_000)]
    assert nginx.runs == 3
    assert nginx.median_delivered_per_s == 45_000
    assert nginx.median_loss == pytest.approx(0.1)
    assert nginx.max_loss == pytest.approx(0.2)
    assert nginx.median_process_us_per_reply == pytest.approx(0.9 / 45_000 * 1e6)
    assert nginx.min_process_us_per_reply == pytest.approx(20.0)  # 0.8 s / 40k and 1.0 s / 50k
    assert nginx.max_process_us_per_reply == pytest.approx(20.0)
    assert nginx.median_cpu_us_per_reply == pytest.approx(1e6 / 45_000)
    assert math.isnan(rated[("kernel-dnat+rps", 100_000)].median_process_us_per_reply)


def test_an_echo_ceiling_is_the_most_replies_at_any_offered_load_flat_out_or_paced() -> None:
    flat_out = [
        Run("kernel-dnat+rps", ECHO_1000, offered=170_000, delivered=68_000, seconds=1.0, busy_cpu_seconds=1),
        Run("nginx", ECHO_1000, offered=170_000, delivered=56_000, seconds=1.0, busy_cpu_seconds=1),
    ]
    paced = [echo_run("kernel-dnat+rps", 100_000, 95_000, None), echo_run("nginx", 100_000, 50_000, 1.0)]
    ceilings = echo_ceilings(summarize(flat_out), summarize_fixed_rate(paced))
    assert ceilings == {(str(ECHO_1000), "kernel-dnat+rps"): 95_000, (str(ECHO_1000), "nginx"): 56_000}


def test_the_fixed_rate_table_has_loss_and_cpu_per_reply_per_rate_and_the_ceilings() -> None:
    runs = [echo_run("nginx", 50_000, 49_000, 0.98), echo_run("kernel-dnat+rps", 50_000, 50_000, None)]
    rated = summarize_fixed_rate(runs)
    table = fixed_rate_table(
        rated, {(str(ECHO_1000), "nginx"): 56_000, (str(ECHO_1000), "kernel-dnat+rps"): 95_000}
    )
    nginx = next(line for line in table.splitlines() if " nginx " in line and "ceiling" not in line)
    assert "50k" in nginx
    assert "49k" in nginx
    assert "2.00%" in nginx  # loss
    assert "20.00" in nginx  # own CPU per reply: 0.98 s / 49k
    dnat = next(line for line in table.splitlines() if "kernel-dnat+rps" in line and "ceiling" not in line)
    assert " - " in dnat  # no process of its own
    assert f"echo ceiling {ECHO_1000}" in table
    assert table.index("kernel-dnat+rps 95k") < table.index("nginx 56k")


def test_compare_with_a_directory_without_a_forwarder_exits_64_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--compare-with", str(tmp_path)]) == os.EX_USAGE
    message = capsys.readouterr().err
    assert repr(str(tmp_path)) in message
    assert "forwarder/__main__.py" in message
    assert len(message.splitlines()) == 1


def test_another_checkout_is_raced_as_forwarder_at_its_name_with_its_relay_twin(tmp_path: Path) -> None:
    checkout = tmp_path / "before"
    (checkout / "forwarder").mkdir(parents=True)
    (checkout / "forwarder" / "__main__.py").write_text("")
    saved = dict(CONTENDERS)
    try:
        names = contenders_module.add_checkout(checkout, "before")
        assert names == ["forwarder@before", "forwarder-relay@before"]
        assert parse_contenders("forwarder@before,forwarder") == ["forwarder@before", "forwarder"]
        assert not CONTENDERS["forwarder@before"].relays_replies
        assert CONTENDERS["forwarder-relay@before"].relays_replies
    finally:
        CONTENDERS.clear()
        CONTENDERS.update(saved)


def test_the_blaster_refuses_more_flows_than_one_address_has_ports_naming_the_limit() -> None:
    # The full bench's memory run asked for 100,000 flows from port 10000 and died at its last step.
    from netlab.programs.blaster import FIRST_PORT, BlastOptions

    BlastOptions(src="198.51.100.10", dst="198.51.100.1", dport=27000, flows=65536 - FIRST_PORT)
    with pytest.raises(
        ValueError, match=rf"flows 100000 from port {FIRST_PORT}: .*at most {65536 - FIRST_PORT}"
    ):
        BlastOptions(src="198.51.100.10", dst="198.51.100.1", dport=27000, flows=100_000)


def test_the_full_bench_measures_flow_memory_with_no_more_flows_than_ports() -> None:
    from netlab.bench.memory import MAX_FLOWS

    assert 0 < Settings.full().memory_flows <= MAX_FLOWS


def test_a_compared_checkout_runs_its_own_forwarder_even_from_a_checkout_with_another(tmp_path: Path) -> None:
    # Started in this repository (whose forwarder/ would shadow PYTHONPATH without -P), the command of
    # another checkout must run that checkout's package.
    other = tmp_path / "before"
    (other / "forwarder").mkdir(parents=True)
    (other / "forwarder" / "__init__.py").write_text("")
    (other / "forwarder" / "__main__.py").write_text("print('the other checkout')\n")
    repository = Path(__file__).resolve().parent.parent

    output = subprocess.run(
        checkout_program(other), cwd=repository, capture_output=True, text=True, check=True
    ).stdout

    assert output == "the other checkout\n"
