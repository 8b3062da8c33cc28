"""Scenario files are validated before anything is built; errors name the file, the element and the value."""

from pathlib import Path

import pytest

from netlab.errors import FixtureNotFoundError, ScenarioError, TopologyError
from netlab.fixtures import scenario_names
from netlab.scenario import load_scenario

VALID = """
topology = "seed"
[forwarder]
listen = ["198.51.100.1:27000"]
destinations = ["192.0.2.2:27000"]
[[traffic]]
from = "client"
src = "203.0.113.7"
to = "198.51.100.1:27000"
payload = "hi"
[[expect.arrives]]
at = "backend:27000"
payload = "hi"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bug-1234.toml"
    path.write_text(text)
    return path


def test_every_shipped_scenario_is_valid() -> None:
    for name in scenario_names():
        assert load_scenario(name).name == name


def test_a_valid_scenario_reads_into_traffic_and_expectations(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, VALID))
    [traffic] = scenario.traffic
    assert (traffic.node, traffic.src, traffic.sport, traffic.dst, traffic.dport) == (
        "client",
        "203.0.113.7",
        4242,
        "198.51.100.1",
        27000,
    )
    assert scenario.expect.arrives[0].payload == b"hi"
    assert scenario.expect.nothing_else


def test_an_unknown_key_is_named_with_the_file_and_element(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('payload = "hi"\n[[expect', 'paylod = "hi"\n[[expect'))
    with pytest.raises(ScenarioError, match=r"bug-1234.toml: traffic\[0\]: unknown key 'paylod'"):
        load_scenario(path)


def test_an_unknown_node_is_named_with_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('at = "backend:27000"', 'at = "bakend:27000"'))
    with pytest.raises(ScenarioError, match=r"expect.arrives\[0\].at: unknown node 'bakend'.*'backend'"):
        load_scenario(path)


def test_a_bad_endpoint_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('at = "backend:27000"', 'at = "backend"'))
    with pytest.raises(ScenarioError, match=r"bad endpoint 'backend': expected NODE:PORT"):
        load_scenario(path)


def test_payload_and_size_together_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('payload = "hi"\n[[expect', 'payload = "hi"\nsize = 3\n[[expect'))
    with pytest.raises(ScenarioError, match=r"traffic\[0\]: give one of payload, payload_hex or size"):
        load_scenario(path)


def test_a_source_of_the_other_family_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('src = "203.0.113.7"', 'src = "2001:db8:113::7"'))
    with pytest.raises(ScenarioError, match=r"traffic\[0\].src: '2001:db8:113::7' is not of the family"):
        load_scenario(path)


def test_a_reply_cannot_be_awaited_from_a_spoofed_source(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('src = "203.0.113.7"', 'src = "203.0.113.7"\nexpect_reply = true'))
    with pytest.raises(
        ScenarioError, match=r"'203.0.113.7': a reply can only be awaited from the node's own"
    ):
        load_scenario(path)


def test_status_expectations_need_a_short_report_period(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + '[expect]\nstatus = ["1 forwarded"]\n')
    with pytest.raises(ScenarioError, match=r"expect.status: needs a short report period.*--stats-interval"):
        load_scenario(path)


def test_an_inline_topology_error_names_the_scenario_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[topology.nodes.client]\n[[topology.links]]\na = { node = 'client' }\n")
    with pytest.raises(TopologyError, match=r"bug-1234.toml: topology: links\[0\].b: expected"):
        load_scenario(path)


def test_a_missing_scenario_names_the_shipped_ones() -> None:
    with pytest.raises(FixtureNotFoundError, match=r"no scenarios fixture 'no-such'.*zero-length-datagram"):
        load_scenario("no-such")


def test_a_relay_reply_path_takes_the_backends_ports_from_the_forwarders_destinations(tmp_path: Path) -> None:
    text = (
        VALID.replace('"192.0.2.2:27000"]', '"192.0.2.2:5353"]')
        + '[reply_path]\nmode = "relay"\nbackend = "192.0.2.2"\n'
    )
    spec = load_scenario(write(tmp_path, text)).reply_path
    assert spec is not None
    assert (spec.mode, spec.node, spec.backend, spec.ports) == ("relay", "host", "192.0.2.2", [5353])
    assert (spec.icmp_errors, spec.reassemble) == (False, False)


def test_a_relay_scenario_runs_the_forwarder_with_reply_relay(tmp_path: Path) -> None:
    from netlab.scenario_run import forwarder_args

    text = VALID + '[reply_path]\nmode = "relay"\nbackend = "192.0.2.2"\n'
    assert forwarder_args(load_scenario(write(tmp_path, text)))[-2:] == ["--reply", "relay"]
    assert "--reply" not in forwarder_args(load_scenario(write(tmp_path, VALID)))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'mode = "bounce"\nbackend = "192.0.2.2"',
            r"reply_path.mode: 'bounce': expected 'direct' or 'relay'",
        ),
        ('backend = "192.0.2.2"', r"reply_path: missing \['backend_network', 'host_address'\]"),
        (
            'mode = "relay"\nbackend = "192.0.2.2"\nhost_address = "198.51.100.1"',
            r"reply_path.host_address: is for mode = 'direct'",
        ),
        (
            'mode = "relay"\nbackend = "192.0.2.9"',
            r"reply_path.ports: no \[forwarder\] destination is the backend",
        ),
        (
            'mode = "relay"\nbackend = "192.0.2.2"\nports = [0]',
            r"reply_path.ports: expected a list of UDP ports",
        ),
    ],
)
def test_a_bad_reply_path_is_refused(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario(write(tmp_path, VALID + "[reply_path]\n" + table + "\n"))
