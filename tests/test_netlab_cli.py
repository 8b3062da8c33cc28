"""The `netlab` command: every command works on a lab made by `netlab up`, and every error is one line
with its documented exit code (64 usage, 66 no such file, 68 no such lab or node, 77 no privilege,
78 invalid file, 127 no such command, 1 a failed check).

Labs made by `netlab up` outlive the command, so each test removes its own (fixture `up_lab`). Tests that
need to be the only lab up (`--lab` omitted, `down --all`) take an exclusive lock the others share.
"""

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import Lab
from netlab.cli.main import main
from netlab.lab import netns, registry
from netlab.lab.process import python_env
from netlab.topology.shipped import seed_deployment


def netlab(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess (for commands whose children write to the terminal), `env` added to ours."""
    return subprocess.run(
        [sys.executable, "-m", "netlab", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=python_env({"SHELL": "/bin/sh", **(env or {})}),
        timeout=60,
        check=False,
    )


def up(capsys: pytest.CaptureFixture[str], topology: str = "seed") -> str:
    assert main(["up", topology]) == 0
    return capsys.readouterr().out.strip()


def remove(lab_id: str) -> None:
    for record in registry.load_records():
        if record.lab_id == lab_id:
            for namespace in record.namespaces:
                registry.destroy_namespace(namespace)
            record.delete()


def lock_path() -> Path:
    """The lock of this session's CLI tests, in its own registry: other sessions' labs are not seen."""
    registry.REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    return registry.REGISTRY_DIR / "cli-tests.lock"


@pytest.fixture
def lab_lock() -> Iterator[None]:
    """Shared: several tests may have labs up at once, but none while an exclusive test runs."""
    with open(lock_path(), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


@pytest.fixture
def only_lab() -> Iterator[None]:
    """Exclusive: no other test of this session has a lab up meanwhile."""
    with open(lock_path(), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture
def up_lab(lab_lock: None, capsys: pytest.CaptureFixture[str]) -> Iterator[str]:
    """A `netlab up seed` lab, removed after the test whatever happens."""
    lab_id = up(capsys)
    try:
        yield lab_id
    finally:
        remove(lab_id)


# -- errors that need no lab


def test_a_usage_error_exits_64(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["exec"])
    assert exited.value.code == 64
    assert "netlab: the following arguments are required: NODE" in capsys.readouterr().err


def test_demo_with_an_unknown_reply_mode_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--reply", "bounce"])
    assert exited.value.code == 64
    assert "invalid choice: 'bounce'" in capsys.readouterr().err


def test_doctor_on_the_machine_without_addresses_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--machine"]) == 64
    assert "needs --backend ADDRESS and --address ADDRESS" in capsys.readouterr().err


def test_doctor_machine_options_without_machine_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--backend", "192.0.2.2"]) == 64
    assert "go with --machine" in capsys.readouterr().err


def test_doctor_with_an_unknown_reply_mode_is_a_usage_error_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["doctor", "--machine", "--reply", "relai"])
    assert exited.value.code == 64
    assert "invalid choice: 'relai'" in capsys.readouterr().err


@pytest.mark.privileged
@pytest.mark.parametrize(
    ("backend", "rule"),
    [
        ("192.0.2.2:5353", "ip rule add from 192.0.2.2 ipproto udp sport 5353 lookup 100"),
        ("[2001:db8::2]:5353", "ip -6 rule add from 2001:db8::2 ipproto udp sport 5353 lookup 100"),
    ],
)
def test_doctor_on_the_machine_in_relay_mode_names_the_relay_rule_for_the_backends_port(
    capsys: pytest.CaptureFixture[str], backend: str, rule: str
) -> None:
    address = "198.51.100.1" if "." in backend else "2001:db8::1"
    assert (
        main(
            ["doctor", "--machine", "--reply", "relay", "--backend", backend, "--address", address, "--json"]
        )
        == 1
    )
    findings = {finding["check"]: finding for finding in json.loads(capsys.readouterr().out)}
    assert "reply source rewrite" not in findings  # direct mode's check does not apply
    assert findings["relay rule"]["ok"] is False
    assert findings["relay rule"]["fix"].startswith(rule)


@pytest.mark.privileged
def test_a_lab_that_does_not_exist_exits_68_naming_the_existing_ones(
    up_lab: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["exec", "--lab", "zzzzzz", "client", "--", "true"]) == 68
    err = capsys.readouterr().err
    assert err.startswith("netlab: no lab 'zzzzzz'; labs: ")
    assert up_lab in err


def test_a_missing_scenario_exits_66_naming_the_shipped_scenarios_and_no_topology(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "no-such-scenario"]) == 66
    err = capsys.readouterr().err
    assert err.startswith(
        "netlab: no scenario file 'no-such-scenario', and no shipped scenario of that name in "
    )
    assert "; shipped scenarios: [" in err
    assert "zero-length-datagram" in err
    assert "short-backend-route" not in err  # a topology kept next to the scenarios


def test_an_invalid_scenario_exits_78_naming_file_element_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('topology = "seed"\n[[traffic]]\nfrom = "nobody"\nto = "198.51.100.1:27000"\n')
    assert main(["run", str(path)]) == 78
    err = capsys.readouterr().err
    assert (
        f"{path}:3: traffic[0].from: unknown node 'nobody'; known nodes: ['backend', 'client', 'host']" in err
    )


def test_up_of_an_unknown_topology_exits_66_naming_the_shipped_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["up", "no-such-topology"]) == 66
    shipped = "shipped topologies: ['demo', 'docker-bridge', 'dual-stack', 'faults', 'seed', 'seed-ipv6']"
    assert shipped in capsys.readouterr().err


def netlab_without_privileges(*args: str) -> subprocess.CompletedProcess[str]:
    """`netlab ARGS` without the lab's capabilities: as root with every capability dropped, else as is."""
    drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*drop, sys.executable, "-m", "netlab", *args],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("command", ["up", "run"])
def test_a_bad_argument_is_reported_before_the_privilege_check_by_up_and_run_alike(
    command: str, tmp_path: Path
) -> None:
    # One order for every command that builds a lab: the argument is validated first, so a typo is named
    # (66, 78) on a machine where the command could not run anyway, and not hidden behind 77.
    unknown = netlab_without_privileges(command, "no-such-file")
    assert unknown.returncode == 66, unknown.stderr
    assert "no-such-file" in unknown.stderr
    invalid = tmp_path / "invalid.toml"
    invalid.write_text("this is = = not toml\n")
    broken = netlab_without_privileges(command, str(invalid))
    assert broken.returncode == 78, broken.stderr
    assert f"{invalid}: not valid TOML" in broken.stderr


@pytest.mark.privileged
def test_without_privileges_a_lab_command_exits_77_naming_the_capability() -> None:
    result = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            sys.executable,
            "-m",
            "netlab",
            "up",
            "seed",
        ],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 77, result.stderr
    assert "needs CAP_NET_ADMIN" in result.stderr


# -- commands on a lab made by `netlab up`


@pytest.mark.privileged
def test_up_prints_an_id_and_the_lab_survives_the_command_and_down_stale(
    up_lab: str, capsys: pytest.CaptureFixture[str]
) -> None:
    namespaces = [f"nl-{up_lab}-{node}" for node in ("client", "host", "backend")]
    assert all(netns.exists(name) for name in namespaces)
    assert main(["down", "--stale"]) == 0
    assert all(netns.exists(name) for name in namespaces)
    assert up_lab not in capsys.readouterr().out
    assert main(["ls", "--json"]) == 0
    listed = {row["id"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed[up_lab]["state"] == "up"
    assert listed[up_lab]["namespaces"] == namespaces


@pytest.mark.privileged
def test_exec_runs_in_the_node_and_exits_with_the_commands_code(up_lab: str) -> None:
    shown = netlab("exec", "--lab", up_lab, "client", "--", "ip", "-o", "addr", "show", "dev", "to-host")
    assert shown.returncode == 0, shown.stderr
    assert "198.51.100.10/24" in shown.stdout
    assert netlab("exec", "--lab", up_lab, "client", "--", "sh", "-c", "exit 5").returncode == 5


@pytest.mark.privileged
def test_exec_of_an_unknown_node_exits_68_naming_the_known_nodes(up_lab: str) -> None:
    result = netlab("exec", "--lab", up_lab, "hots", "--", "true")
    assert result.returncode == 68
    assert (
        result.stderr
        == f"netlab: lab {up_lab} has no node 'hots'; known nodes: ['backend', 'client', 'host']\n"
    )


@pytest.mark.privileged
def test_exec_of_a_command_that_does_not_exist_exits_127(up_lab: str) -> None:
    result = netlab("exec", "--lab", up_lab, "host", "--", "no-such-command-xyz")
    assert result.returncode == 127
    assert "command 'no-such-command-xyz' not found" in result.stderr


@pytest.mark.privileged
def test_shell_runs_the_commands_it_reads_inside_the_node(up_lab: str) -> None:
    result = netlab(
        "shell", "--lab", up_lab, "backend", stdin="echo node=$NETLAB_NODE\nip -o -4 addr\nexit 3\n"
    )
    assert result.returncode == 3
    assert "node=backend" in result.stdout
    assert "192.0.2.2/24" in result.stdout


@pytest.mark.privileged
def test_send_crafts_a_spoofed_datagram_that_sniff_sees_on_the_backend(up_lab: str) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "netlab", "sniff", "--lab", up_lab, "backend", "--count", "1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    ) as sniffer:  # closes its pipes even when the test fails
        try:
            assert sniffer.stderr is not None
            assert sniffer.stderr.readline().startswith("sniffing UDP on backend")  # recording from here on
            sent = netlab(
                "send", "--lab", up_lab, "--from", "client", "--src", "203.0.113.7",
                "--to", "192.0.2.2:27000", "--payload", "hello", "--json",
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            assert json.loads(sent.stdout) == {
                "from": "client", "src": "203.0.113.7", "sport": 4242, "to": "192.0.2.2:27000", "size": 5,
                "count": 1,
            }  # fmt: skip
            out, err = sniffer.communicate(timeout=20)
        finally:
            sniffer.kill()
            sniffer.wait()
    assert sniffer.returncode == 0, err
    seen = json.loads(out)
    assert (seen["interface"], seen["direction"], seen["src"], seen["sport"]) == (
        "to-host",
        "in",
        "203.0.113.7",
        4242,
    )
    assert (seen["dst"], seen["dport"], seen["size"], seen["payload"]) == (
        "192.0.2.2",
        27000,
        5,
        b"hello".hex(),
    )


@pytest.mark.privileged
def test_sniff_counts_a_fragmented_datagram_once(up_lab: str) -> None:
    sniffer = subprocess.Popen(
        [sys.executable, "-m", "netlab", "sniff", "--lab", up_lab, "backend", "--count", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    try:
        assert sniffer.stderr is not None
        assert sniffer.stderr.readline().startswith("sniffing UDP on backend")
        for body in (["--size", "3000"], ["--payload", "small"]):
            sent = netlab("send", "--lab", up_lab, "--from", "client", "--to", "192.0.2.2:27000", *body)
            assert sent.returncode == 0, sent.stderr
        out, err = sniffer.communicate(timeout=20)
    finally:
        sniffer.kill()
        sniffer.wait()
    assert sniffer.returncode == 0, err
    seen = [json.loads(line) for line in out.splitlines()]
    assert [item["fragment"] for item in seen] == [True, True, True, False]  # 3000 B: three fragments
    assert [item["more_fragments"] for item in seen] == [True, True, False, False]
    assert err.endswith("2 datagrams (3 fragments)\n")


@pytest.mark.privileged
def test_sniff_stops_after_its_timeout(up_lab: str) -> None:
    result = netlab("sniff", "--lab", up_lab, "client", "--timeout", "0.2")
    assert result.returncode == 0
    assert result.stderr.endswith("0 datagrams\n")


@pytest.mark.privileged
def test_send_from_a_node_without_an_address_of_that_family_needs_src(
    up_lab: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["send", "--lab", up_lab, "--from", "client", "--to", "[2001:db8:2::2]:27000"]) == 64
    assert "node 'client' has no IPv6 address: give --src" in capsys.readouterr().err


@pytest.mark.privileged
def test_doctor_on_a_lab_derives_the_deployment_from_its_roles(
    up_lab: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--lab", up_lab, "--json"]) == 1  # no reply-path rules in a fresh seed lab
    findings = {(item["check"], item["detail"]): item for item in json.loads(capsys.readouterr().out)}
    assert [check for check, _ in findings if not findings[check, _]["ok"]] == ["reply source rewrite"]
    assert ("rp_filter", "host routes 203.0.113.7 back via to-client") in findings  # from [roles] spoofed
    assert main(["doctor", "--lab", up_lab]) == 1
    assert "[MISSING] reply source rewrite" in capsys.readouterr().out


@pytest.mark.privileged
def test_down_removes_the_named_lab(lab_lock: None, capsys: pytest.CaptureFixture[str]) -> None:
    lab_id = up(capsys)
    try:
        assert main(["down", lab_id]) == 0
        assert (
            capsys.readouterr().out
            == f"removed 3 namespaces: nl-{lab_id}-client nl-{lab_id}-host nl-{lab_id}-backend\n"
        )
        assert not [name for name in netns.list_names() if name.startswith(f"nl-{lab_id}-")]
        assert main(["ls"]) == 0
        assert lab_id not in capsys.readouterr().out
    finally:
        remove(lab_id)


@pytest.mark.privileged
def test_down_refuses_a_lab_its_running_owner_removes(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    lab.build(seed_deployment())
    assert main(["down", lab.lab_id]) == 1
    assert f"belongs to running process {os.getpid()}" in capsys.readouterr().err
    assert netns.exists(lab["host"].namespace)


def test_down_needs_exactly_one_of_name_all_stale_orphans(capsys: pytest.CaptureFixture[str]) -> None:
    # A usage error is named before the privilege check, with or without root.
    assert main(["down"]) == 64
    assert "give one of NAME, --all, --stale or --orphans" in capsys.readouterr().err
    assert main(["down", "--stale", "--orphans"]) == 64


@pytest.mark.privileged
def test_with_one_lab_up_lab_may_be_omitted_and_with_two_it_is_a_usage_error(
    only_lab: None, capsys: pytest.CaptureFixture[str]
) -> None:
    first = up(capsys)
    second = ""
    try:
        assert netlab("exec", "host", "--", "true").returncode == 0
        second = up(capsys)
        result = netlab("exec", "host", "--", "true")
        assert result.returncode == 64
        assert (
            f"2 labs are up ({first}, {second})" in result.stderr or f"({second}, {first})" in result.stderr
        )
    finally:
        remove(first)
        remove(second)


@pytest.mark.privileged
def test_down_all_removes_every_lab_made_by_up(only_lab: None, capsys: pytest.CaptureFixture[str]) -> None:
    made = [up(capsys), up(capsys)]
    try:
        assert main(["down", "--all"]) == 0
        assert not [name for name in netns.list_names() if name.startswith(tuple(f"nl-{i}-" for i in made))]
        assert not [record for record in registry.load_records() if record.detached]
    finally:
        for lab_id in made:
            remove(lab_id)


@pytest.mark.privileged
def test_down_all_leaves_a_lab_made_outside_the_test_session_alone(
    only_lab: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A lab someone made with their own registry: seen from the machine's default registry, its
    # namespaces belong to nobody; this session must not judge them at all.
    outside = {"NETLAB_REGISTRY": str(tmp_path / "registry")}
    made = netlab("up", "seed", env=outside)
    assert made.returncode == 0, made.stderr
    lab_id = made.stdout.strip()
    try:
        namespaces = [f"nl-{lab_id}-{node}" for node in ("client", "host", "backend")]
        assert all(netns.exists(name) for name in namespaces)

        assert main(["down", "--all"]) == 0
        registry.reap_stale()

        assert all(netns.exists(name) for name in namespaces)
    finally:
        assert netlab("down", lab_id, env=outside).returncode == 0


# -- netlab run


@pytest.mark.privileged
def test_run_of_a_passing_scenario_exits_0_and_keeps_nothing(tmp_path: Path) -> None:
    result = netlab("run", "zero-length-datagram", "--runs", str(tmp_path))
    assert result.returncode == 0, result.stdout
    assert result.stdout.rstrip().endswith("zero-length-datagram passed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.privileged
def test_run_of_a_failing_scenario_exits_1_and_keeps_its_captures_and_logs(tmp_path: Path) -> None:
    scenario = tmp_path / "wrong-payload.toml"
    text = (
        Path(__file__).parent.parent / "fixtures/scenarios/activating-datagram-forwarded.toml"
    ).read_text()
    scenario.write_text(text.replace('payload = "wake up"\n\n[[expect', 'payload = "wake up!"\n\n[[expect'))
    runs = tmp_path / "runs"
    result = netlab("run", str(scenario), "--runs", str(runs), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert not report["passed"]
    failed = [check for check in report["checks"] if not check["ok"]]
    assert [check["what"] for check in failed] == [  # the wrong datagram is reported once, not as "else"
        "a datagram arrives at backend:27000 from 203.0.113.7:4242 with payload b'wake up'",
    ]
    assert "payload is 8 bytes, not 7 (the same bytes up to byte 7)" in failed[0]["detail"]  # the diff
    run_dir = Path(report["run_dir"])
    assert run_dir.parent == runs
    assert (run_dir / "captures" / "backend-to-host.pcap").stat().st_size > 24
    assert any("forwarder" in path.name for path in run_dir.glob("*.log"))


@pytest.mark.parametrize(
    ("option", "value", "shown"),
    [
        ("--count", "0", "0"),
        ("--count", "-1", "-1"),
        ("--timeout", "-1", "-1.0"),
        ("--timeout", "nan", "nan"),
    ],
)
def test_sniff_exits_64_naming_a_count_or_timeout_it_could_never_stop_at(
    option: str, value: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Checked before the lab and the privileges are, like every other argument of every command.
    assert main(["sniff", "--lab", "nosuch", "backend", option, value]) == os.EX_USAGE
    message = capsys.readouterr().err
    assert f"{option} {shown}: expected" in message
    assert len(message.splitlines()) == 1


STEERED_TOPOLOGY = """
[nodes.client]
[nodes.host]
[[nodes.host.tproxy]]
version = 4
to_port = 27000
dports = "27000-27099"
daddr = "198.51.100.1"
[[links]]
a = { node = "client", addresses = ["198.51.100.10/24"] }
b = { node = "host", addresses = ["198.51.100.1/24"] }
"""


@pytest.mark.privileged
def test_up_installs_a_topologys_tproxy_steering_ls_lists_it_and_down_takes_it_away(
    lab_lock: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "steered.toml"
    path.write_text(STEERED_TOPOLOGY)
    lab_id = up(capsys, str(path))
    try:
        host = f"nl-{lab_id}-host"
        tables = netns.run_in(
            host,
            lambda: subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True),
        ).stdout
        assert "netlab_tproxy_" in tables  # kept after `up` returned: the lab is detached
        assert main(["ls"]) == 0
        assert (
            "        tproxy host: ip daddr 198.51.100.1 udp dport 27000-27099 -> :27000\n"
            in capsys.readouterr().out
        )
        assert main(["ls", "--json"]) == 0
        listed = {row["id"]: row for row in json.loads(capsys.readouterr().out)}
        assert listed[lab_id]["tproxy"] == ["host: ip daddr 198.51.100.1 udp dport 27000-27099 -> :27000"]
        assert main(["down", lab_id]) == 0
        assert not netns.exists(host)
    finally:
        remove(lab_id)
