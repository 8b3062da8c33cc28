"""`netlab demo`, the README's main job: every row right, exit 0, nothing left behind."""

import io
import re

import pytest

from netlab import netns
from netlab.demo import run_demo

pytestmark = pytest.mark.privileged


def test_demo_passes_and_prints_what_the_backend_saw_for_each_client() -> None:
    out = io.StringIO()
    assert run_demo(out) == 0
    text = out.getvalue()
    assert "198.51.100.10:" in text
    assert "[2001:db8:1::10]:" in text
    assert "203.0.113.7:4242       198.51.100.1:27021     203.0.113.7:4242" in text
    assert "WRONG" not in text
    assert "forwarder STATUS:" in text
    assert "demo passed" in text
    lab_id = re.search(r"building lab (\w+)", text)
    assert lab_id is not None
    assert not [name for name in netns.list_names() if name.startswith(f"nl-{lab_id[1]}-")]


def test_demo_in_relay_mode_shows_the_same_table_with_the_backend_on_other_ports() -> None:
    out = io.StringIO()
    assert run_demo(out, reply="relay") == 0
    text = out.getvalue()
    assert "other ports (37000, 37003, 37020, 37021)" in text
    assert "203.0.113.7:4242       198.51.100.1:27021     203.0.113.7:4242" in text
    assert "[2001:db8:1::10]:" in text
    assert "WRONG" not in text
    assert "replies relayed" in text  # the forwarder's STATUS line counts them
    assert "relayed by the forwarder" in text
