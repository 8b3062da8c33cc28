"""Every mistake a user made in the review session is one `netlab: ` line naming the value, with its
documented exit code; every error netlab raises is a NetlabError kind, and every kind is exported."""

import inspect
import re
from pathlib import Path

import pytest

import netlab
import netlab.errors
from netlab.bench.run import Settings, run_bench
from netlab.cli import demo as demo_command
from netlab.cli import labs
from netlab.cli.common import exit_code_of
from netlab.cli.main import main
from netlab.errors import (
    NetlabError,
    PacketError,
    ScenarioError,
    SystemCallError,
    TopologyError,
    UsageError,
)
from netlab.lab import registry
from netlab.lab.capture import read_pcap
from netlab.programs.crafted import Crafted
from netlab.scenario.load import load_scenario

TRAFFIC = 'topology = "seed"\n[[traffic]]\nfrom = "client"\nto = "198.51.100.1:27000"\n'


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--sport", "70000"], "netlab send: --sport 70000: expected a port from 0 to 65535"),
        (["--count", "0"], "netlab send: --count 0: expected 1 or more"),
        (
            ["--src", "2001:db8::1"],
            "netlab send: --src '2001:db8::1' is IPv6 but --to '198.51.100.1:53' is IPv4",
        ),
        (["--size", "70000"], "netlab send: --size 70000: a UDP payload over IPv4 is 0 to 65507 bytes"),
        (["--fragment-size", "-5"], "netlab send: --fragment-size -5: expected 0 (only above the MTU) or 8"),
        (["--src", "nonsense"], "netlab send: --src: bad address 'nonsense'"),
    ],
)
def test_a_bad_send_option_is_one_line_exiting_64(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    code, err = run_cli(capsys, "send", "--from", "client", "--to", "198.51.100.1:53", *options)
    assert code == 64
    assert err.startswith(f"netlab: {message}")
    assert err.count("\n") == 1


def test_a_bad_destination_port_of_send_exits_64_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "send", "--from", "client", "--to", "198.51.100.1:70000")
    assert (code, err.count("\n")) == (64, 1)
    assert "'198.51.100.1:70000'" in err


@pytest.mark.parametrize(
    ("extra", "element", "message"),
    [
        ("sport = 70000\n", "traffic[0].sport", "sport 70000: expected a port from 0 to 65535"),
        ("fragment_size = -5\n", "traffic[0].fragment_size", "-5: expected 0 (only above the MTU) or 8"),
        ("fragment_size = 4\n", "traffic[0].fragment_size", "4: expected 0 (only above the MTU) or 8"),
    ],
)
def test_a_bad_traffic_value_fails_validation_before_anything_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: str, element: str, message: str
) -> None:
    path = tmp_path / "bug.toml"
    path.write_text(TRAFFIC + extra)
    with pytest.raises(ScenarioError, match="^" + re.escape(f"{path}:5: {element}: {message}")):  # its line
        load_scenario(path)
    code, err = run_cli(capsys, "run", str(path))  # refused before the privilege check and any lab
    assert (code, err.count("\n")) == (78, 1)


def test_an_unknown_shipped_topology_names_the_scenario_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bug.toml"
    path.write_text(TRAFFIC.replace('"seed"', '"seeed"'))
    code, err = run_cli(capsys, "run", str(path))
    assert code == 66
    assert err.startswith(f"netlab: {path}: topology: no topologies fixture 'seeed'")
    assert "'seed'" in err


def test_a_missing_topology_says_what_is_expected_not_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bug.toml"
    path.write_text('[[traffic]]\nfrom = "client"\nto = "198.51.100.1:27000"\n')
    code, err = run_cli(capsys, "run", str(path))
    assert code == 78
    assert err.startswith(f"netlab: {path}: top level: missing 'topology': expected a shipped name (one of [")
    assert "None" not in err


def test_a_topology_given_to_run_says_it_is_a_topology(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, "run", str(netlab.topology_path("seed")))
    assert code == 78
    assert "this is a topology file (it has links, nodes, roles, routes), not a scenario" in err
    assert "netlab up FILE" in err


@pytest.mark.privileged
def test_a_scenario_given_to_up_says_it_is_a_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    scenario = netlab.fixtures.scenario_path("zero-length-datagram")
    code, err = run_cli(capsys, "up", str(scenario))
    assert code == 78
    assert "this is a scenario file (it has" in err
    assert "netlab run FILE" in err


def test_an_interrupted_command_on_an_up_lab_does_not_claim_the_lab_was_removed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(labs, "require_privileges", lambda: None)
    monkeypatch.setattr(labs, "node_namespace", lambda lab_id, node: "nl-000000-host")
    monkeypatch.setattr(labs, "_run_in_node", interrupted)
    code, err = run_cli(capsys, "exec", "host", "--", "sleep", "10")
    assert code == 130
    assert "removed" not in err
    assert err == "netlab: interrupted; the lab made by `netlab up` stays up (`netlab down ID` removes it)\n"


def test_an_interrupted_command_that_owns_its_lab_says_it_was_removed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import netlab.scenario.demo

    def interrupted(**_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_command, "require_privileges", lambda: None)
    monkeypatch.setattr(netlab.scenario.demo, "run_demo", interrupted)
    assert run_cli(capsys, "demo") == (130, "netlab: interrupted; the lab was removed\n")


def test_an_interrupted_command_without_a_lab_says_only_interrupted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted() -> list[registry.LabRecord]:
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "load_records", interrupted)
    assert run_cli(capsys, "ls") == (130, "netlab: interrupted\n")


def test_every_error_kind_is_exported_from_netlab() -> None:
    kinds = {
        name
        for name, value in vars(netlab.errors).items()
        if inspect.isclass(value) and issubclass(value, NetlabError)
    }
    assert kinds <= set(netlab.__all__)
    for name in kinds:
        assert getattr(netlab, name) is getattr(netlab.errors, name)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UsageError("x"), 64),
        (netlab.AddressError("x"), 64),
        (PacketError("x"), 64),
        (netlab.FixtureNotFoundError("x"), 66),
        (netlab.UnknownLabError("x"), 68),
        (netlab.UnknownNodeError("x"), 68),
        (SystemCallError(1, "setns"), 71),
        (netlab.MissingPrivilegeError("x"), 77),
        (TopologyError("x"), 78),
        (ScenarioError("x"), 78),
        (netlab.LabTimeoutError("x"), 1),
        (netlab.ProcessFailedError("x"), 1),
    ],
)
def test_each_error_kind_has_its_documented_exit_code(error: NetlabError, code: int) -> None:
    assert exit_code_of(error) == code


def test_an_unknown_bench_contender_is_a_usage_error_before_any_lab() -> None:
    with pytest.raises(UsageError, match="unknown contender 'nginxx': expected one of"):
        run_bench(Settings(contenders=["nginxx"]))


def test_a_file_that_is_not_a_pcap_is_a_netlab_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "not.pcap"
    path.write_bytes(b"GIF89a")
    with pytest.raises(NetlabError, match=r"not\.pcap is not a little-endian microsecond pcap file"):
        read_pcap(path)


@pytest.mark.parametrize(
    ("datagram", "message"),
    [
        (Crafted("203.0.113.7", "198.51.100.1", 70000, 53), "source port 70000: expected a port from 0"),
        (Crafted("203.0.113.7", "198.51.100.1", 1, -1), "destination port -1: expected a port from 0"),
        (Crafted("2001:db8::1", "198.51.100.1", 1, 53), "source '2001:db8::1' is IPv6 but destination"),
        (Crafted("nonsense", "198.51.100.1", 1, 53), "source 'nonsense': expected an IPv4 or IPv6 address"),
        (Crafted("203.0.113.7", "198.51.100.1", 1, 53, count=0), "count 0: expected 1 or more"),
        (Crafted("203.0.113.7", "198.51.100.1", 1, 53, bytes(65508)), "size 65508: a UDP payload over IPv4"),
        (Crafted("2001:db8::1", "2001:db8::2", 1, 53, fragment_size=40), "fragment size 40: expected 0"),
    ],
)
def test_a_datagram_that_cannot_be_crafted_is_a_packet_error_naming_the_value(
    datagram: Crafted, message: str
) -> None:
    with pytest.raises(PacketError, match=re.escape(message)):
        datagram.check()


def test_a_datagram_that_can_be_crafted_checks_as_itself() -> None:
    datagram = Crafted("2001:db8::1", "2001:db8::2", 0, 65535, bytes(65527), fragment_size=56)
    assert datagram.check() is datagram
