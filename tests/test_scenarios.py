"""Every fixtures/scenarios/*.toml is one test: a bug report becomes a file, and the file a test.

The list is read at collection time through netlab.fixtures, so a new file is a new test without any
change here. Each runs in the `lab` fixture's lab, whose run directory (logs, pcaps) is kept on failure.
"""

import pytest

from netlab import Lab
from netlab.fixtures import scenario_names, scenario_path
from netlab.scenario.load import load_scenario
from netlab.scenario.run import run_scenario


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
