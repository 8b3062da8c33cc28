"""`netlab demo`, the README's main job: every row right, exit 0, nothing left behind."""

import io
import re

import pytest
from pyroute2 import IPRoute

from netlab import Lab, UsageError
from netlab.cli.main import main
from netlab.lab import netns
from netlab.scenario.demo import (
    BACKEND_V4,
    BACKEND_V6,
    PORTS,
    demo_plan,
    demo_topology,
    run_demo,
    set_up_backend,
)
from netlab.service.relay import is_relayed


def test_in_relay_mode_the_demo_puts_the_backend_on_other_ports_with_reply_relay() -> None:
    relay, direct = demo_plan("relay"), demo_plan("direct")
    assert relay.listen == direct.listen
    assert relay.listen[0] == "198.51.100.1:27000"
    assert relay.backend_ports == (37000, 37003, 37020, 37021)
    assert relay.destinations[0] == "192.0.2.2:37000"
    assert relay.destinations[-1] == "[2001:db8:2::2]:37021"
    assert relay.args[-2:] == ["--reply", "relay"]
    assert direct.backend_ports == PORTS
    assert "--reply" not in direct.args


def test_an_unknown_reply_mode_is_refused_naming_it() -> None:
    with pytest.raises(UsageError, match=r"reply mode 'relai': expected one of \['direct', 'relay'\]"):
        demo_plan("relai")
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--reply", "relai"])
    assert exited.value.code == 64


@pytest.mark.privileged
def test_in_relay_mode_the_demo_relays_the_backends_replies_from_its_ports_and_only_those(lab: Lab) -> None:
    lab.build(demo_topology())
    set_up_backend(lab, demo_plan("relay"))
    host = lab["host"].namespace
    with IPRoute(netns=host) as ipr:
        iif = ipr.link_lookup(ifname="to-backend")[0]
    for backend, client in ((BACKEND_V4, "198.51.100.10"), (BACKEND_V6, "2001:db8:1::10")):
        for port in demo_plan("relay").backend_ports:
            assert is_relayed(host, backend, client, port, iif=iif), (backend, port)
        assert not is_relayed(host, backend, client, 27000, iif=iif)  # the host's own port: not the backend's


@pytest.mark.privileged
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


@pytest.mark.privileged
def test_demo_in_relay_mode_passes_with_the_same_table_and_the_backend_on_other_ports() -> None:
    out = io.StringIO()
    assert run_demo(out, reply="relay") == 0
    text = out.getvalue()
    assert "reply mode: relay (host port -> backend port: 27000->37000, 27003->37003" in text
    assert "203.0.113.7:4242       198.51.100.1:27021     203.0.113.7:4242" in text
    assert "[2001:db8:1::10]:" in text
    assert "WRONG" not in text
    assert "demo passed" in text
