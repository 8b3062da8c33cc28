"""Scenario files are validated before anything is built; errors name the file, the element and the value."""

import re
from pathlib import Path

import pytest

from netlab.errors import FixtureNotFoundError, ScenarioError, TopologyError
from netlab.fixtures import fixtures_dir, is_topology_file, scenario_names, scenario_path
from netlab.scenario import load
from netlab.scenario.load import load_scenario
from netlab.scenario.model import counted

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
    with pytest.raises(ScenarioError, match=r"bug-1234.toml:10: traffic\[0\]: unknown key 'paylod'"):
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


def shipped_list(message: str) -> list[str]:
    """The names after 'shipped scenarios: ' in an error message."""
    return re.findall(r"'([a-z0-9-]+)'", message.partition("shipped scenarios: ")[2])


def test_a_missing_scenario_is_named_with_the_shipped_ones_and_only_those() -> None:
    with pytest.raises(FixtureNotFoundError) as raised:
        load_scenario("no-such")

    message = str(raised.value)
    directory = fixtures_dir() / "scenarios"
    assert message.startswith(
        f"no scenario file 'no-such', and no shipped scenario of that name in {directory}; "
    )
    # The topology kept next to the scenarios is not one of them.
    assert shipped_list(message) == scenario_names()
    assert "short-backend-route" not in message


def test_the_topology_next_to_the_scenarios_is_no_scenario_by_name() -> None:
    with pytest.raises(FixtureNotFoundError) as raised:
        scenario_path("short-backend-route")

    message = str(raised.value)
    assert message.startswith("no shipped scenario 'short-backend-route' in ")
    assert (
        "(short-backend-route.toml there is a topology that scenarios use); shipped scenarios: [" in message
    )
    assert shipped_list(message) == scenario_names()


def test_an_expectation_reads_in_the_singular_or_the_plural_as_its_count(tmp_path: Path) -> None:
    text = VALID + '[[expect.arrives]]\nat = "backend:27000"\ncount = 2\n'
    one, two = load_scenario(write(tmp_path, text)).expect.arrives

    assert one.describe() == "a datagram arrives at backend:27000 with payload b'hi'"
    assert two.describe() == "2 datagrams arrive at backend:27000"


def test_report_lines_count_in_the_right_number() -> None:
    assert [counted(n, "item") for n in (0, 1, 2)] == ["0 items", "1 item", "2 items"]


RELAY = """
topology = "dual-stack"
[forwarder]
listen = ["198.51.100.1:27000", "[2001:db8:51::1]:27000"]
destinations = ["192.0.2.2:5353", "[2001:db8:2::2]:5353", "dns=192.0.2.2:5354"]
[reply_path]
mode = "relay"
"""


def test_relay_mode_takes_the_backends_and_ports_from_the_destinations_and_adds_reply_relay(
    tmp_path: Path,
) -> None:
    scenario = load_scenario(write(tmp_path, RELAY))
    assert scenario.reply_path is not None
    assert scenario.reply_path.mode == "relay"
    assert scenario.reply_path.relay == {"192.0.2.2": [5353, 5354], "2001:db8:2::2": [5353]}
    assert scenario.forwarder is not None
    assert scenario.forwarder.args[-2:] == ["--reply", "relay"]


def test_relay_mode_with_a_backend_and_ports_routes_exactly_those(tmp_path: Path) -> None:
    text = RELAY + 'backend = "2001:db8:2::2"\nports = [5353, 6000]\n'
    scenario = load_scenario(write(tmp_path, text))
    assert scenario.reply_path is not None
    assert scenario.reply_path.relay == {"2001:db8:2::2": [5353, 6000]}


def test_the_reply_path_mode_defaults_to_direct(tmp_path: Path) -> None:
    scenario = load_scenario("reply-path-reply-received")
    assert scenario.reply_path is not None
    assert scenario.reply_path.mode == "direct"
    assert scenario.forwarder is not None
    assert "--reply" not in scenario.forwarder.args


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('mode = "relai"', r"reply_path.mode: 'relai': expected one of \['direct', 'relay'\]"),
        ('host_address = "198.51.100.1"', r'reply_path.host_address: goes with mode = "direct"'),
        ("ports = [5353]", r"reply_path.ports: needs backend = ADDRESS"),
        ('backend = "192.0.2.2"\nports = [70000]', r"reply_path.ports: port 70000"),
        ('backend = "192.0.2.2"\nports = []', r"reply_path.ports: \[\]: expected at least one port"),
        (
            'backend = "192.0.2.9"',
            r"needs backend and ports, or a \[forwarder\] with ADDRESS:PORT destinations on",
        ),
        ('backend = "backend"', r"reply_path.backend: bad address 'backend'"),
    ],
)
def test_a_bad_relay_reply_path_is_refused_naming_the_element_and_value(
    tmp_path: Path, extra: str, message: str
) -> None:
    text = (
        RELAY.replace('mode = "relay"\n', "")
        + ("" if extra.startswith("mode") else 'mode = "relay"\n')
        + extra
    )
    with pytest.raises(ScenarioError, match=message):
        load_scenario(write(tmp_path, text))


def test_relay_mode_refuses_forwarder_args_asking_for_direct_replies(tmp_path: Path) -> None:
    text = RELAY.replace("[reply_path]", 'args = ["--reply", "direct"]\n[reply_path]')
    with pytest.raises(ScenarioError, match=r"forwarder.args: \['--reply', 'direct'\] contradict"):
        load_scenario(write(tmp_path, text))


def test_ports_are_refused_in_direct_mode(tmp_path: Path) -> None:
    text = 'topology = "seed"\n[reply_path]\nbackend = "192.0.2.2"\nports = [53]\n'
    with pytest.raises(ScenarioError, match=r'reply_path.ports: goes with mode = "relay"'):
        load_scenario(write(tmp_path, text))


FORWARDS_53_TO_5353 = """
topology = "dual-stack"
[forwarder]
listen = ["198.51.100.1:53", "[2001:db8:51::1]:53", "198.51.100.1:27000", "198.51.100.1:123"]
destinations = ["192.0.2.2:5353", "[2001:db8:2::2]:5354", "192.0.2.2", "192.0.2.9:1123"]
[reply_path]
backend = "192.0.2.2"
backend_network = "192.0.2.0/24"
host_address = "198.51.100.1"
"""


def test_the_reply_path_learns_the_backend_ports_that_differ_from_the_hosts(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, FORWARDS_53_TO_5353))
    assert scenario.reply_path is not None
    # Only destinations at the reply path's backend whose port differs from the listen port's.
    assert scenario.reply_path.ports == {5353: 53}


def test_named_destinations_are_matched_to_their_sockets_for_learned_ports(tmp_path: Path) -> None:
    text = FORWARDS_53_TO_5353.replace(
        'destinations = ["192.0.2.2:5353", "[2001:db8:2::2]:5354", "192.0.2.2", "192.0.2.9:1123"]',
        'fdnames = ["dns", "dns6", "game", "ntp"]\n'
        'destinations = ["game=192.0.2.2:27001", "dns=192.0.2.2:5353", "ntp=192.0.2.2:123",'
        ' "dns6=[2001:db8:2::2]"]',
    )
    scenario = load_scenario(write(tmp_path, text))
    assert scenario.reply_path is not None
    assert scenario.reply_path.ports == {5353: 53, 27001: 27000}


def test_an_arrival_may_be_expected_at_a_port_the_echo_server_holds(tmp_path: Path) -> None:
    text = VALID + '[echo]\nnode = "backend"\nports = [27000]\n'
    scenario = load_scenario(write(tmp_path, text))
    assert scenario.echo is not None
    assert [arrival.at.port for arrival in scenario.expect.arrives] == [27000]


def test_within_of_a_traffic_item_needs_expect_reply(tmp_path: Path) -> None:
    text = VALID.replace('payload = "hi"\n', 'payload = "hi"\nwithin = 5\n', 1)
    with pytest.raises(ScenarioError, match=r"traffic\[0\].within: waits for a reply"):
        load_scenario(write(tmp_path, text))


def test_a_proxy_header_table_puts_the_header_it_describes_before_the_payload(tmp_path: Path) -> None:
    from forwarder.core.proxy_protocol import HeaderProblem, build, build_local, parse

    text = VALID.replace(
        'payload = "hi"\n[[expect',
        'payload = "hi"\nproxy_header = { src = "203.0.113.7:4242", dst = "198.51.100.1:27000" }\n[[expect',
    )
    [traffic] = load_scenario(write(tmp_path, text)).traffic
    assert traffic.payload == build(("203.0.113.7", 4242), ("198.51.100.1", 27000)) + b"hi"
    local = load_scenario(
        write(
            tmp_path,
            VALID.replace('payload = "hi"\n[[expect', 'proxy_header = { command = "local" }\n[[expect'),
        )
    )
    assert local.traffic[0].payload == build_local()
    bad = VALID.replace(
        'payload = "hi"\n[[expect',
        'proxy_header = { src = "203.0.113.7:4242", dst = "198.51.100.1:27000", transport = 1 }\n[[expect',
    )
    assert parse(load_scenario(write(tmp_path, bad)).traffic[0].payload) is HeaderProblem.TRANSPORT


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('{ src = "203.0.113.7:4242" }', r"traffic\[0\]\.proxy_header: needs src"),
        ('{ src = "203.0.113.7:1", dst = "[2001:db8::1]:2" }', "must be of one address family"),
        ('{ command = "local", version = 16 }', r"proxy_header\.version: 16: expected 0 to 15"),
        ('{ command = "ask" }', r"proxy_header\.command: 'ask'"),
        ('{ command = "local", cut = 99 }', r"proxy_header\.cut: 99"),
        ('{ command = "local", colour = 1 }', "colour"),
    ],
)
def test_a_bad_proxy_header_table_names_the_field(tmp_path: Path, table: str, message: str) -> None:
    text = VALID.replace('payload = "hi"\n[[expect', f"proxy_header = {table}\n[[expect")
    with pytest.raises(ScenarioError, match=message):
        load_scenario(write(tmp_path, text))


def test_a_topology_file_next_to_the_scenarios_is_not_taken_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "pair.toml").write_text(
        "[nodes.client]\n[nodes.host]\n[[links]]\na = { node = 'client', addresses = ['198.51.100.10/24'] }\n"
        "b = { node = 'host', addresses = ['198.51.100.1/24'] }\n"
    )
    (scenarios / "uses-pair.toml").write_text(
        "# Pins nothing\ntopology = 'pair.toml'\n[forwarder]\nlisten = ['198.51.100.1:27000']\n"
        "destinations = ['198.51.100.10:27000']\n"
    )
    monkeypatch.setenv("NETLAB_FIXTURES", str(tmp_path))
    assert scenario_names() == ["uses-pair"]
    assert sorted(load_scenario("uses-pair").topology.nodes) == ["client", "host"]


def test_the_shipped_topology_next_to_its_scenario_is_used_and_not_listed() -> None:
    assert is_topology_file(fixtures_dir() / "scenarios" / "short-backend-route.toml")
    assert "short-backend-route" not in scenario_names()
    scenario = load_scenario("backend-unreachable-counted")
    assert scenario.topology.source.endswith("scenarios/short-backend-route.toml")


def test_an_error_names_the_line_of_the_element_it_is_about(tmp_path: Path) -> None:
    text = VALID + '[[expect.arrives]]\nat = "backend:27000"\ncount = 0\n'
    with pytest.raises(ScenarioError, match=r"bug-1234.toml:16: expect.arrives\[1\].count: 0 must be"):
        load_scenario(write(tmp_path, text))


def test_lines_are_counted_past_multi_line_strings_that_look_like_tables(tmp_path: Path) -> None:
    setup = '[[setup]]\nnode = "host"\nnft = """\n[[traffic]]\nfrom = "x"\n"""\n'
    text = VALID.replace('from = "client"', 'from = "clinet"').replace("[[traffic]]", setup + "[[traffic]]")
    with pytest.raises(ScenarioError, match=r"bug-1234.toml:13: traffic\[0\].from: unknown node 'clinet'"):
        load_scenario(write(tmp_path, text))


def test_a_scenario_without_a_forwarder_is_refused_naming_the_table(tmp_path: Path) -> None:
    text = VALID.replace(
        '[forwarder]\nlisten = ["198.51.100.1:27000"]\ndestinations = ["192.0.2.2:27000"]\n', ""
    )
    with pytest.raises(ScenarioError, match=r"bug-1234.toml: top level: missing \[forwarder\]"):
        load_scenario(write(tmp_path, text))


def test_a_doctor_scenario_needs_no_forwarder() -> None:
    scenario = load_scenario("doctor-ip-forward")
    assert scenario.forwarder is None
    assert scenario.expect.doctor_names == ["ip_forward"]


@pytest.mark.parametrize(
    ("old", "new", "element"),
    [
        (
            'destinations = ["192.0.2.2:27000"]',
            'destinations = ["10.0.0.2:27000"]',
            "forwarder.destinations[0]",
        ),
        (
            'destinations = ["192.0.2.2:27000"]',
            'destinations = ["game=[2001:4860::8888]:53"]',
            "forwarder.destinations[0]",
        ),
        ('to = "198.51.100.1:27000"', 'to = "8.8.8.8:27000"', "traffic[0].to"),
        ('src = "203.0.113.7"', 'src = "192.168.1.7"', "traffic[0].src"),
        ('listen = ["198.51.100.1:27000"]', 'listen = ["172.16.0.1:27000"]', "forwarder.listen[0]"),
    ],
)
def test_addresses_outside_the_documentation_ranges_are_refused(
    tmp_path: Path, old: str, new: str, element: str
) -> None:
    path = write(tmp_path, VALID.replace(old, new))
    with pytest.raises(
        ScenarioError, match=rf"{re.escape(element)}: address .* is outside the lab's address"
    ):
        load_scenario(path)


def test_the_readmes_annotated_example_names_every_traffic_and_arrives_key() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Scenarios") :]
    example = re.search(r"^```toml\n(.*?)^```$", section, re.M | re.S)
    assert example, "the Scenarios section has no annotated ```toml example"

    def unnamed(keys: set[str]) -> list[str]:
        return sorted(key for key in keys if not re.search(rf"(?<![\w-]){key}(?![\w-])", example[1]))

    assert (unnamed(load._TRAFFIC), unnamed(load._ARRIVES)) == ([], [])


STEERED = VALID.replace(
    "[[traffic]]",
    """[[tproxy]]
version = 4
to_port = 27000
dports = "27000-27099"
daddr = "198.51.100.1"
iifname = "to-client"
[[traffic]]""",
    1,
)


def test_a_tproxy_table_steers_in_the_host_role_by_default_or_in_the_node_named(tmp_path: Path) -> None:
    [steering] = load_scenario(write(tmp_path, STEERED)).topology.steerings
    assert (steering.node, steering.to_port, steering.dports, steering.iifname) == (
        "host",
        27000,
        ((27000, 27099),),
        "to-client",
    )
    named = STEERED.replace('iifname = "to-client"', 'node = "backend"\niifname = "to-host"')
    [steering] = load_scenario(write(tmp_path, named)).topology.steerings
    assert steering.node == "backend"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            ("version = 4", "version = 6"),
            "bug-1234.toml:10: tproxy[0].daddr: '198.51.100.1' is not an IPv6 address",
        ),
        (
            ("to_port = 27000", 'to_port = "27000"'),
            "bug-1234.toml:8: tproxy[0].to_port: expected a port of 1 to",
        ),
        (
            ('dports = "27000-27099"', 'dports = "27000-"'),
            "bug-1234.toml:9: tproxy[0].dports: '27000-': expected",
        ),
        (
            ('iifname = "to-client"', 'iifname = "eth9"'),
            "tproxy[0].iifname: 'eth9' is not an interface of node 'host'",
        ),
        (('iifname = "to-client"', 'node = "hots"'), "bug-1234.toml:11: tproxy[0].node: unknown node 'hots'"),
        (('iifname = "to-client"', "dport = 1"), "bug-1234.toml:11: tproxy[0]: unknown key 'dport'"),
    ],
)
def test_a_bad_tproxy_table_is_refused_in_one_line_naming_the_line_the_element_and_the_value(
    tmp_path: Path, change: tuple[str, str], fragment: str
) -> None:
    old, new = change
    assert old in STEERED
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, STEERED.replace(old, new, 1)))
    assert "\n" not in str(caught.value)
    assert fragment in str(caught.value)


def test_a_range_destination_outside_the_lab_ranges_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('"192.0.2.2:27000"', '"27000-27099@10.0.0.2:30000-30099"'))
    with pytest.raises(ScenarioError, match=r"forwarder.destinations\[0\]: address '10.0.0.2' is outside"):
        load_scenario(path)


def test_a_tproxy_key_that_is_not_a_list_of_tables_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('topology = "seed"', 'topology = "seed"\ntproxy = 1'))
    with pytest.raises(ScenarioError, match=r"bug-1234.toml: top level.tproxy: expected list, got 1"):
        load_scenario(path)


RELAYED = VALID.replace("[[traffic]]", '[reply_path]\nmode = "relay"\nreply_tproxy = 40000\n[[traffic]]', 1)


def test_relay_with_a_reply_socket_gives_the_forwarder_both_options_and_steers_each_backend_port() -> None:
    scenario = load_scenario("doctor-reply-tproxy-healthy")
    assert scenario.forwarder is not None
    assert scenario.forwarder.args == ["--reply", "relay", "--reply-tproxy", "40000"]
    assert scenario.reply_path is not None
    assert (scenario.reply_path.reply_tproxy, scenario.reply_path.relay) == (
        40000,
        {"192.0.2.2": [5353], "2001:db8:2::2": [5353]},
    )


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            ("reply_tproxy = 40000", "reply_tproxy = 0"),
            "reply_path.reply_tproxy: reply_tproxy 0: expected a number",
        ),
        (('mode = "relay"', 'mode = "direct"'), 'reply_path.reply_tproxy: goes with mode = "relay"'),
        (
            (
                'destinations = ["192.0.2.2:27000"]',
                'destinations = ["192.0.2.2:27000"]\nargs = ["--reply-tproxy", "41"]',
            ),
            "forwarder.args: ['--reply-tproxy', '41', '--reply', 'relay'] contradict [reply_path] "
            "reply_tproxy = 40000",
        ),
    ],
)
def test_a_bad_reply_socket_port_is_refused_in_one_line(
    tmp_path: Path, change: tuple[str, str], fragment: str
) -> None:
    old, new = change
    assert old in RELAYED
    with pytest.raises(ScenarioError) as caught:
        load_scenario(write(tmp_path, RELAYED.replace(old, new, 1)))
    assert "\n" not in str(caught.value)
    assert fragment in str(caught.value)
