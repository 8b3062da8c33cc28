"""`netlab doctor` in relay mode (`forwarder --reply relay`): it reads the mode from the forwarder's command
line, asks the kernel where a reply of the backend would go, and names a missing rule, a rule that
swallows all of the backend's traffic and a missing IPv6 twin, each with commands that fix it.

    client 198.51.100.10, 2001:db8:51::10 --- [host] --- 192.0.2.2, 2001:db8:2::2 backend (dual-stack.toml)
"""

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from netlab import Lab, load_topology, start_forwarder
from netlab.doctor.checks import Deployment, Finding, diagnose, reply_mode
from netlab.doctor.probes import NamespaceProbe, is_forwarder, reply_mode_of
from netlab.lab.tproxy import steer
from netlab.service.relay import install_local_relay_routing, install_relay_routing

V4 = {"backend": "192.0.2.2", "host": "198.51.100.1", "gateway": "192.0.2.1", "clients": ["198.51.100.10"]}
V6 = {
    "backend": "2001:db8:2::2",
    "host": "2001:db8:51::1",
    "gateway": "2001:db8:2::1",
    "clients": ["2001:db8:51::10"],
}


@pytest.mark.parametrize(
    ("argv", "mode"),
    [
        (["python3", "-m", "forwarder", "192.0.2.2:53"], "direct"),
        (["python3", "-m", "forwarder", "--reply", "relay", "192.0.2.2:53"], "relay"),
        (["systemd-transparent-udp-forwarderd", "--reply=relay", "192.0.2.2:53"], "relay"),
        (["python3", "-m", "forwarder", "--reply", "direct", "192.0.2.2:53"], "direct"),
    ],
)
def test_the_reply_mode_is_read_from_the_forwarders_option_in_both_spellings(
    argv: list[str], mode: str
) -> None:
    assert reply_mode_of(argv) == mode


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        ([b"/usr/sbin/systemd-transparent-udp-forwarderd", b"192.0.2.2:53"], True),  # the Debian package
        (
            [
                b"/opt/venv/bin/python3",
                b"/opt/venv/bin/systemd-transparent-udp-forwarderd",
                b"--reply",
                b"relay",
            ],
            True,
        ),
        (
            [b"/usr/bin/python3", b"-I", b"/usr/local/bin/systemd-transparent-udp-forwarderd", b"192.0.2.2"],
            True,
        ),
        ([b"python3", b"-m", b"forwarder", b"192.0.2.2:53"], True),
        ([b"python3", b"-m", b"netlab", b"doctor"], False),
        ([b"python3", b"/opt/other-tool", b"systemd-transparent-udp-forwarderd"], False),
        ([b"/usr/bin/python3"], False),
        ([], False),
    ],
)
def test_forwarder_processes_are_recognised_however_they_were_installed(
    argv: list[bytes], found: bool
) -> None:
    assert is_forwarder(argv) is found


@pytest.mark.privileged
def test_the_doctor_sees_a_forwarder_run_as_pips_console_script(lab: Lab, tmp_path: Path) -> None:
    # The README's install runs `.../bin/python3 .../bin/systemd-transparent-udp-forwarderd ...` (the
    # script's shebang): the doctor said "no forwarder running" and gave direct-mode advice.
    script = tmp_path / "bin" / "systemd-transparent-udp-forwarderd"
    script.parent.mkdir()
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom forwarder.service.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    lab.build(load_topology("seed"))
    forwarder = start_forwarder(
        lab["host"],
        ["198.51.100.1:27000"],
        ["192.0.2.2:5353"],
        args=["--reply", "relay"],
        program=[str(script)],
    )
    client = lab["client"].udp_socket("198.51.100.10", 0)
    client.sendto(b"wake", ("198.51.100.1", 27000))
    forwarder.wait_ready()
    target = deployment(lab, V4, reply_mode=None, backend_ports=())

    [command_line] = target.host.forwarder_command_lines()
    assert command_line[:2] == [sys.executable, str(script)]
    assert reply_mode(target) == "relay"
    assert forwarder.stop() == 0


def deployment(lab: Lab, family: Mapping[str, object], **overrides: object) -> Deployment:
    settings: dict[str, object] = {
        "host": NamespaceProbe("host", lab["host"].namespace),
        "backend": NamespaceProbe("backend", lab["backend"].namespace),
        "backend_address": family["backend"],
        "host_address": family["host"],
        "clients": family["clients"],
        "host_backend_address": family["gateway"],
        "reply_mode": "relay",
        "backend_ports": [5353],
    }
    settings.update(overrides)
    return Deployment(**settings)  # type: ignore[arg-type]


def problems(target: Deployment) -> list[Finding]:
    return [finding for finding in diagnose(target) if not finding.ok]


def apply_fix(lab: Lab, finding: Finding) -> None:
    """Run the finding's fix in the host, as an operator pasting it would."""
    for command in finding.fix.split(" && "):
        lab["host"].check(shlex.split(command.removeprefix("netlab exec host -- ")))


@pytest.mark.privileged
def test_the_doctor_reads_relay_mode_from_a_forwarder_waiting_for_its_first_datagram(lab: Lab) -> None:
    lab.build(load_topology("seed"))
    start_forwarder(lab["host"], ["198.51.100.1:27000"], ["192.0.2.2:5353"], args=["--reply", "relay"])
    target = deployment(lab, V4, reply_mode=None, backend_ports=())

    assert reply_mode(target) == "relay"
    [finding] = problems(target)
    assert finding.check == "relay rule"
    assert "ip rule add from 192.0.2.2 ipproto udp sport 5353 lookup 100" in finding.fix  # from its DEST


@pytest.mark.privileged
def test_without_a_forwarder_the_doctor_checks_the_direct_reply_path(lab: Lab) -> None:
    lab.build(load_topology("seed"))
    target = deployment(lab, V4, reply_mode=None)
    assert reply_mode(target) == "direct"
    assert [finding.check for finding in problems(target)] == ["reply source rewrite"]


@pytest.mark.privileged
def test_a_missing_relay_rule_is_named_and_its_fix_heals_it(lab: Lab) -> None:
    lab.build(load_topology("dual-stack"))
    [finding] = problems(deployment(lab, V4))
    assert finding.check == "relay rule"
    assert finding.fix == (
        "netlab exec host -- ip rule add from 192.0.2.2 ipproto udp sport 5353 lookup 100 && "
        "netlab exec host -- ip route add local 0.0.0.0/0 dev lo table 100"
    )
    apply_fix(lab, finding)
    assert problems(deployment(lab, V4)) == []


@pytest.mark.privileged
def test_a_rule_swallowing_all_of_the_backends_traffic_is_named_and_its_fix_narrows_it(lab: Lab) -> None:
    lab.build(load_topology("dual-stack"))
    install_relay_routing(lab["host"], "192.0.2.2", 5353)
    lab["host"].check(
        ["ip", "rule", "add", "priority", "50", "from", "192.0.2.2", "ipproto", "udp", "lookup", "100"]
    )
    [finding] = problems(deployment(lab, V4))
    assert finding.check == "relay rule scope"
    assert "DNS lookups" in finding.detail
    assert finding.fix.startswith("netlab exec host -- ip rule del priority 50 && ")
    apply_fix(lab, finding)
    assert problems(deployment(lab, V4)) == []


@pytest.mark.privileged
def test_an_ipv4_relay_rule_without_its_ipv6_twin_is_named_and_its_fix_adds_the_twin(lab: Lab) -> None:
    lab.build(load_topology("dual-stack"))
    install_relay_routing(lab["host"], "192.0.2.2", 5353)
    assert problems(deployment(lab, V4)) == []
    [finding] = problems(deployment(lab, V6))
    assert finding.check == "relay rule IPv6 twin"
    assert finding.fix == (
        "netlab exec host -- ip -6 rule add from 2001:db8:2::2 ipproto udp sport 5353 lookup 100 && "
        "netlab exec host -- ip -6 route add local ::/0 dev lo table 100"
    )
    apply_fix(lab, finding)
    assert problems(deployment(lab, V6)) == []


@pytest.mark.privileged
def test_a_backend_on_the_host_itself_needs_the_loopback_rule(lab: Lab) -> None:
    lab.build(load_topology("dual-stack"))
    local = deployment(lab, {**V4, "backend": "127.0.0.1"}, backend=None)
    assert [finding.check for finding in problems(local)] == ["relay rule"]
    install_local_relay_routing(lab["host"], versions=[4])
    assert problems(local) == []


@pytest.mark.privileged
def test_a_range_destination_in_relay_mode_needs_the_relay_rule_for_its_whole_range(lab: Lab) -> None:
    # `27000-27099@192.0.2.2:30000-30099`: the backend answers from 30000-30099, each reply to the flow
    # socket of its client; one relay rule with a port range covers them all.
    lab.build(load_topology("dual-stack"))
    start_forwarder(
        lab["host"], ["198.51.100.1:27000"], ["27000-27099@192.0.2.2:30000-30099"], args=["--reply", "relay"]
    )
    steer(lab["host"], version=4, to_port=27000, daddr="198.51.100.1", dports=(27000, 27099))
    target = deployment(lab, V4, reply_mode=None, backend_ports=())
    [finding] = problems(target)
    assert finding.check == "relay rule"
    assert "replies from port 30000-30099 on to the client" in finding.detail
    assert finding.fix == (
        "netlab exec host -- ip rule add from 192.0.2.2 ipproto udp sport 30000-30099 lookup 100 && "
        "netlab exec host -- ip route add local 0.0.0.0/0 dev lo table 100"
    )
    install_relay_routing(lab["host"], "192.0.2.2", (30000, 30049))  # half of it
    [finding] = problems(target)
    assert "replies from port 30000-30099 on to the client" in finding.detail
    apply_fix(lab, finding)
    assert problems(target) == []
