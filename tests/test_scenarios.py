"""Every fixtures/scenarios/*.toml is one test: a bug report becomes a file, and the file a test.

The list is read at collection time through netlab.fixtures, so a new file is a new test without any
change here. Each runs in the `lab` fixture's lab, whose run directory (logs, pcaps) is kept on failure.
"""

import pytest

from netlab import Lab
from netlab.fixtures import load_topology, scenario_names, scenario_path
from netlab.scenario.load import load_scenario
from netlab.scenario.run import run_scenario
from netlab.traffic.payload import make_payload


def test_at_least_ten_scenarios_ship_and_each_says_which_behaviour_it_pins() -> None:
    names = scenario_names()
    assert len(names) >= 10
    for name in names:
        first = scenario_path(name).read_text().splitlines()[0]
        assert first.startswith("# Pins "), f"{name}.toml must start with '# Pins ...', not {first!r}"


@pytest.mark.privileged
@pytest.mark.parametrize("name", scenario_names())
def test_scenario(name: str, lab: Lab) -> None:
    result = run_scenario(load_scenario(scenario_path(name)), lab)
    assert result.passed, result.report()


@pytest.mark.privileged
def test_the_report_counts_the_traffic_sent_in_the_right_number(lab: Lab) -> None:
    scenario = load_scenario("zero-length-datagram")
    assert len(scenario.traffic) == 1

    report = run_scenario(scenario, lab).report()

    assert "  [pass] the traffic is sent (1 item)\n" in report, report


@pytest.mark.privileged
def test_a_reply_from_an_unrewritten_port_is_named_in_the_failure(lab: Lab) -> None:
    scenario = load_scenario("reply-path-backend-on-another-port")
    assert scenario.reply_path is not None
    assert scenario.reply_path.ports == {5353: 53}
    scenario.reply_path.ports = {}  # as a hand-written recipe that rewrites only the address
    scenario.traffic[0].within = 2.0
    result = run_scenario(scenario, lab)
    [failed] = [check for check in result.checks if not check.ok]
    assert failed.what == "reply to 5 B from client:4242 to 198.51.100.1:53"
    assert failed.detail == (
        "no reply from 198.51.100.1:53 within 2.0s; a reply came from 198.51.100.1:5353 (1 datagram) "
        "instead, which the client's connected socket does not accept"
    )


@pytest.mark.privileged
def test_a_reply_that_never_comes_says_nothing_came_back(lab: Lab) -> None:
    scenario = load_scenario("reply-path-backend-on-another-port")
    scenario.reply_path = None
    scenario.echo = None
    scenario.expect.arrives = []
    scenario.traffic[0].within = 1.0
    result = run_scenario(scenario, lab)
    [failed] = [check for check in result.checks if not check.ok]
    assert (
        failed.detail == "no reply from 198.51.100.1:53 within 1.0s; nothing came back to 198.51.100.10:4242"
    )


@pytest.mark.privileged
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_fragmented_relay_reply_without_reassembly_says_reassembly_is_missing(
    family: str, lab: Lab
) -> None:
    scenario = load_scenario("relay-fragmented-reply-intact")
    scenario.setup = []  # no connection tracking on the host: fragments are routed one by one
    if family == "ipv6":
        scenario.topology = load_topology("dual-stack")
        assert scenario.forwarder is not None
        assert scenario.reply_path is not None
        scenario.forwarder.listen = ["[2001:db8:51::1]:27000"]
        scenario.forwarder.destinations = ["[2001:db8:2::2]:5353"]
        scenario.reply_path.relay = {"2001:db8:2::2": [5353]}
        scenario.traffic[0].dst = "2001:db8:51::1"
        scenario.traffic[0].payload = make_payload(2000)
        scenario.traffic[0].reply_contains = None
    scenario.traffic[0].within = 2.0
    scenario.expect.status = []
    result = run_scenario(scenario, lab)
    [failed] = [check for check in result.checks if not check.ok]
    assert failed.what.startswith("reply to ")
    assert "it came in fragments (larger than the path MTU)" in failed.detail, failed.detail
    assert "the host must reassemble before routing" in failed.detail
