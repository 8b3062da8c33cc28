"""The systemd units in fixtures/systemd: systemd accepts them, the hardened one scores 2.0 or lower in
`systemd-analyze security`, and the forwarder works with CAP_NET_RAW as its only capability (what the
hardened unit grants), making only the system calls the units' filters allow.

Nothing here boots or talks to a service manager: only `systemd-analyze verify`, `systemd-analyze security
--offline=true` and, in the lab, `systemd-socket-activate`.

client 198.51.100.10 --- 198.51.100.1 [host: forwarder as uid 65534, CAP_NET_RAW only] 192.0.2.1
                                                                                  --- 192.0.2.2 backend
spoofed client source: 203.0.113.7:4242; the forwarder listens on 198.51.100.1:27000
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
from e2e_helpers import serve_in_thread

from netlab import Lab, start_forwarder
from netlab.lab.tproxy import steer, transparent_socket
from netlab.lab.wait import wait_until
from netlab.service.activation import HeldSockets
from netlab.service.notify import NotifyReceiver
from netlab.service.relay import install_relay_route
from netlab.topology.shipped import seed_deployment

UNITS = Path(__file__).resolve().parent.parent / "fixtures" / "systemd"
FORWARDER_PACKAGE = Path(__file__).resolve().parent.parent / "forwarder"
HARDENED = "transparent-udp-forwarder@.service"
RANGE_SERVICE = "transparent-udp-forwarder-range@.service"
RANGE_SOCKET = "transparent-udp-forwarder-range@.socket"
AVORION_SOCKET = "proxy-to-avorion-udp.socket"
AVORION_SERVICE = "proxy-to-avorion-udp.service"
# Where the units expect the daemon: the Debian package installs it there, a manual install links it there.
INSTALLED_BINARY = "/usr/sbin/systemd-transparent-udp-forwarderd"
# A template is checked as this instance (the hardened template's instance is the UDP port).
INSTANCE = "27015"
CAP_NET_RAW = 13
NOBODY = 65534


def unit_paths() -> list[Path]:
    """Every unit file shipped in fixtures/systemd."""
    return sorted(path for path in UNITS.iterdir() if path.suffix in (".service", ".socket"))


def parse_unit(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> its values in order, from a unit file (comments dropped, continuations joined)."""
    settings: dict[str, list[str]] = {}
    section = ""
    logical = ""
    for raw in path.read_text().splitlines():
        if not logical and raw.lstrip().startswith(("#", ";")):
            continue
        if raw.endswith("\\"):
            logical += raw[:-1] + " "
            continue
        line, logical = (logical + raw).strip(), ""
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise ValueError(f"{path.name}: line {line!r} is neither a [Section] nor Key=Value")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def effective_list(values: list[str]) -> set[str]:
    """The set a list setting ends up with: an empty assignment resets it, later lines add to it."""
    result: set[str] = set()
    for value in values:
        if value == "":
            result = set()
        result.update(value.split())
    return result


def instance_name(path: Path) -> str:
    """`foo@.service` -> `foo@27015.service`; other names unchanged."""
    return path.name.replace("@.", f"@{INSTANCE}.")


def install_for_checking(directory: Path) -> list[Path]:
    """Copy every unit into `directory` as systemd would load it here, and return the copies.

    Templates become an instance; ExecStart= runs this checkout's forwarder (`python -m forwarder`)
    instead of the daemon in /usr/sbin, which need not be installed on the test machine.
    """
    here = f"{shlex.quote(sys.executable)} -m forwarder"
    copies = []
    for path in unit_paths():
        text = path.read_text()
        if path.suffix == ".service":
            assert text.count(f"ExecStart={INSTALLED_BINARY} ") == 1, (
                f"{path.name}: expected one ExecStart={INSTALLED_BINARY} ... line to check"
            )
            text = text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={here} ")
        copy = directory / instance_name(path)
        copy.write_text(text)
        copies.append(copy)
    # proxy-to-avorion-udp.service BindsTo= the operator's game server; stand in for that unit.
    backend = directory / "avorion-server.service"
    backend.write_text(f"[Service]\nExecStart={shutil.which('sleep')} infinity\n")
    return copies


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze not found: install the Debian package 'systemd'"
    return subprocess.run(
        [analyze, "--no-pager", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_fixtures_hold_the_avorion_example_and_the_hardened_template() -> None:
    names = {path.name for path in unit_paths()}
    assert {AVORION_SOCKET, AVORION_SERVICE, HARDENED, "transparent-udp-forwarder@.socket"} <= names


def test_every_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    copies = install_for_checking(tmp_path)

    result = systemd_analyze("verify", "--man=no", *map(str, copies))

    # verify exits 0 on unknown keys and unparsable values, which it only prints: any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_analyze_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    copies = install_for_checking(tmp_path)
    hardened = tmp_path / instance_name(UNITS / HARDENED)
    hardened.write_text(hardened.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))

    result = systemd_analyze("verify", "--man=no", *map(str, copies))

    assert "Unknown key 'ProtectSystm'" in result.stderr


def exposure_of(unit: Path) -> float:
    """The overall exposure (0 best, 10 worst) `systemd-analyze security --offline=true` reports."""
    result = systemd_analyze("security", "--offline=true", str(unit))
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, f"no overall exposure level in:\n{result.stdout}{result.stderr}"
    return float(found[1])


def test_hardened_service_has_an_exposure_of_at_most_2_0(tmp_path: Path) -> None:
    install_for_checking(tmp_path)

    assert exposure_of(tmp_path / instance_name(UNITS / HARDENED)) <= 2.0


def test_the_port_range_service_has_the_hardened_sandbox_and_an_exposure_of_at_most_2_0(
    tmp_path: Path,
) -> None:
    install_for_checking(tmp_path)
    hardened, ranged = parse_unit(UNITS / HARDENED), parse_unit(UNITS / RANGE_SERVICE)
    sandbox = {key: value for key, value in hardened.items() if not key.startswith("Unit.")}
    sandbox["Service.EnvironmentFile"] = ["/etc/transparent-udp-forwarder-range/%i.env"]

    assert {key: value for key, value in ranged.items() if not key.startswith("Unit.")} == sandbox
    assert exposure_of(tmp_path / instance_name(UNITS / RANGE_SERVICE)) <= 2.0


def test_the_port_range_socket_is_transparent_for_the_tproxy_rule_and_names_its_service() -> None:
    settings = parse_unit(UNITS / RANGE_SOCKET)

    assert settings["Socket.Transparent"] == ["true"]
    assert settings["Socket.ListenDatagram"] == ["%i"]
    assert parse_unit(UNITS / RANGE_SERVICE)["Unit.Requires"] == ["transparent-udp-forwarder-range@%i.socket"]


def test_the_avorion_example_without_the_sandbox_scores_worse_than_2_0(tmp_path: Path) -> None:
    # Pins that the score parsed above is the real one: a lightly hardened unit must be rated higher.
    install_for_checking(tmp_path)

    assert exposure_of(tmp_path / AVORION_SERVICE) > 2.0


@pytest.mark.parametrize("name", [HARDENED, AVORION_SERVICE, RANGE_SERVICE])
def test_the_transparent_services_hold_cap_net_raw_and_no_other_capability(name: str) -> None:
    # CAP_NET_RAW allows IP_TRANSPARENT and raw sockets; CAP_NET_ADMIN would add only SO_RCVBUFFORCE.
    settings = parse_unit(UNITS / name)

    assert effective_list(settings["Service.AmbientCapabilities"]) == {"CAP_NET_RAW"}
    assert effective_list(settings["Service.CapabilityBoundingSet"]) == {"CAP_NET_RAW"}
    assert settings["Service.DynamicUser"] == ["yes"]
    assert settings["Service.NoNewPrivileges"] == ["yes"]
    assert "Service.User" not in settings


def test_hardened_service_is_type_notify_with_a_watchdog_and_notify_access_main() -> None:
    settings = parse_unit(UNITS / HARDENED)

    assert settings["Service.Type"] == ["notify"]
    assert settings["Service.NotifyAccess"] == ["main"]
    assert settings["Service.WatchdogSec"]


def receive_buffer_bytes(text: str) -> int:
    """A systemd size ('4M', '262144', '512K') in bytes (K/M/G are powers of 1024)."""
    found = re.fullmatch(r"(\d+)([KMG]?)", text)
    assert found, f"ReceiveBuffer={text!r} is not a size"
    return int(found[1]) * int(1024 ** " KMG".index(found[2] or " "))


@pytest.mark.parametrize("name", [AVORION_SOCKET, "transparent-udp-forwarder@.socket", RANGE_SOCKET])
def test_socket_units_buffer_dozens_of_reassembled_64k_datagrams(name: str) -> None:
    settings = parse_unit(UNITS / name)

    # The default 208 KiB holds about two; the kernel charges more than the payload, so ask for 32.
    assert receive_buffer_bytes(settings["Socket.ReceiveBuffer"][-1]) >= 32 * 65536
    assert settings["Socket.Transparent"] == ["true"]


def test_the_socket_template_passes_packet_info_so_a_relayed_first_reply_leaves_from_the_address_asked() -> (
    None
):
    assert parse_unit(UNITS / "transparent-udp-forwarder@.socket")["Socket.PassPacketInfo"] == ["yes"]


def test_the_hardened_service_may_ask_the_kernel_for_routes_for_the_relay_check() -> None:
    families = parse_unit(UNITS / HARDENED)["Service.RestrictAddressFamilies"][-1].split()
    assert "AF_NETLINK" in families


def test_avorion_service_has_one_destination_per_listening_socket_in_the_same_order() -> None:
    ports = [
        value.rpartition(":")[2] for value in parse_unit(UNITS / AVORION_SOCKET)["Socket.ListenDatagram"]
    ]
    command = shlex.split(parse_unit(UNITS / AVORION_SERVICE)["Service.ExecStart"][0])

    assert command[0] == INSTALLED_BINARY
    assert [destination.rpartition(":")[2] for destination in command[1:]] == ports
    assert all(destination.startswith("192.0.2.2:") for destination in command[1:])


# --- the forwarder with CAP_NET_RAW as its only capability, as the hardened unit runs it ---

LISTEN = "198.51.100.1:27000"


def drop_privileges(capabilities: str) -> list[str]:
    """A setpriv prefix: uid/gid `nobody`, no groups, no new privileges, only `capabilities` (e.g.
    '+net_raw', or '' for none) in every capability set, as DynamicUser= and AmbientCapabilities= do."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv not found: install the Debian package 'util-linux'"
    caps = f"-all{',' + capabilities if capabilities else ''}"
    return [
        setpriv,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--no-new-privs",
        f"--inh-caps={caps}",
        f"--ambient-caps={caps}",
        f"--bounding-set={caps}",
        "--",
    ]


@pytest.fixture
def notify_for_nobody(lab: Lab) -> NotifyReceiver:
    """A notify socket that uid `nobody` may send to (the lab's own lives in pytest's private tmp_path)."""
    directory = Path(tempfile.mkdtemp(prefix="netlab-notify-"))
    lab.defer(shutil.rmtree, directory, True)
    directory.chmod(0o755)
    receiver = NotifyReceiver(directory / "notify.sock")
    lab.defer(receiver.close)
    os.chmod(receiver.path, 0o666)
    return receiver


class NobodyForwarder(NamedTuple):
    """How to start the forwarder as uid `nobody`: `program` and `env` for start_forwarder."""

    program: list[str]
    env: dict[str, str]


@pytest.fixture
def forwarder_for_nobody(lab: Lab, notify_for_nobody: NotifyReceiver) -> NobodyForwarder:
    """The forwarder as `nobody` runs: the system Python on a copy of the package in a directory anyone may
    read, since the checkout and its virtualenv may be private (a clone in root's 0700 home directory); the
    forwarder needs nothing but the standard library."""
    python = shutil.which("python3", path=os.defpath)
    assert python is not None, f"no python3 in {os.defpath}: install the Debian package 'python3'"
    directory = Path(tempfile.mkdtemp(prefix="netlab-forwarder-"))
    lab.defer(shutil.rmtree, directory, True)
    for source in FORWARDER_PACKAGE.rglob("*.py"):  # new files: readable whatever the checkout's modes
        copy = directory / "forwarder" / source.relative_to(FORWARDER_PACKAGE)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(source.read_bytes())
    for path in (directory, *(path for path in directory.rglob("*") if path.is_dir())):
        path.chmod(0o755)
    # -P: the copy on PYTHONPATH, never a `forwarder` package in the working directory (the checkout).
    return NobodyForwarder(
        [python, "-P", "-m", "forwarder"],
        {"NOTIFY_SOCKET": str(notify_for_nobody.path), "PYTHONPATH": str(directory)},
    )


def process_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a mapping."""
    with open(f"/proc/{pid}/status") as handle:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in handle)}


@pytest.mark.privileged
def test_forwarder_as_nobody_with_only_cap_net_raw_forwards_the_spoofed_source(
    lab: Lab, notify_for_nobody: NotifyReceiver, forwarder_for_nobody: NobodyForwarder
) -> None:
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    forwarder = start_forwarder(
        lab["host"],
        [LISTEN],
        ["192.0.2.2:27000"],
        env=forwarder_for_nobody.env,
        command_prefix=drop_privileges("+net_raw"),
        program=forwarder_for_nobody.program,
    )

    lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=27000, payload=b"first")
    notify_for_nobody.wait_for("READY", "1", timeout=15, is_alive=forwarder.is_running)
    lab["client"].send_udp(src="203.0.113.8", dst="198.51.100.1", sport=5353, dport=27000, payload=b"second")

    received = [backend.recvfrom(65535), backend.recvfrom(65535)]
    assert received == [(b"first", ("203.0.113.7", 4242)), (b"second", ("203.0.113.8", 5353))]
    # systemd-socket-activate execs (no fork), and so does setpriv: its pid is the forwarder's.
    status = process_status(forwarder.process.pid)
    only_net_raw = f"{1 << CAP_NET_RAW:016x}"
    assert status["Uid"].split() == [str(NOBODY)] * 4
    assert status["Groups"] == ""
    # Started with CAP_NET_RAW (the bounding set still says so), it gave it up once its raw sockets existed.
    assert status["CapBnd"] == only_net_raw
    assert [status[key] for key in ("CapEff", "CapPrm", "CapInh", "CapAmb")] == ["0" * 16] * 4
    assert status["NoNewPrivs"] == "1"
    assert forwarder.stop() == 0, forwarder.process.output()


@pytest.mark.privileged
def test_a_port_range_as_the_range_unit_runs_it_relays_replies_from_the_port_asked_with_only_cap_net_raw(
    lab: Lab, notify_for_nobody: NotifyReceiver, forwarder_for_nobody: NobodyForwarder
) -> None:
    # transparent-udp-forwarder-range@27000: a transparent socket the tproxy rule feeds, the service as
    # nobody with CAP_NET_RAW alone, here in relay mode (its raw reply socket, its flow sockets).
    lab.build(seed_deployment())
    host = lab["host"]
    serve_in_thread(lab, lab["backend"].udp_socket("192.0.2.2", 5353), lambda data, peer: b"answer:" + data)
    install_relay_route(host, "192.0.2.2", 5353)
    steer(host, version=4, to_port=27000, daddr="198.51.100.1", dports=(27000, 27050))
    held = HeldSockets(host, ["0.0.0.0:27000"], [transparent_socket(host, 4, 27000)])
    forwarder = start_forwarder(
        host,
        [],
        ["27000-27050@192.0.2.2:5353"],
        sockets=held,
        args=["--reply", "relay"],
        env=forwarder_for_nobody.env,
        command_prefix=drop_privileges("+net_raw"),
        program=forwarder_for_nobody.program,
    )
    client = lab["client"].udp_socket("198.51.100.10", 4242)
    client.settimeout(10)

    answers = []
    for port in (27042, 27007):
        client.sendto(b"%d" % port, ("198.51.100.1", port))
        answers.append(client.recvfrom(100))

    assert answers == [(b"answer:27042", ("198.51.100.1", 27042)), (b"answer:27007", ("198.51.100.1", 27007))]
    notify_for_nobody.wait_for("READY", "1", timeout=15, is_alive=forwarder.is_running)
    assert process_status(forwarder.process.pid)["Uid"].split() == [str(NOBODY)] * 4
    assert forwarder.stop() == 0, forwarder.process.output()


@pytest.mark.privileged
def test_forwarder_as_nobody_without_any_capability_exits_77_naming_the_unit_setting(
    lab: Lab, notify_for_nobody: NotifyReceiver, forwarder_for_nobody: NobodyForwarder
) -> None:
    lab.build(seed_deployment())
    forwarder = start_forwarder(
        lab["host"],
        [LISTEN],
        ["192.0.2.2:27000"],
        env=forwarder_for_nobody.env,
        command_prefix=drop_privileges(""),
        program=forwarder_for_nobody.program,
    )

    lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=27000, payload=b"x")

    assert forwarder.process.wait(15) == 77
    assert "AmbientCapabilities=CAP_NET_RAW" in forwarder.process.output()
    assert notify_for_nobody.values("READY") == []


def syscall_set(names: set[str], seen: frozenset[str] = frozenset()) -> set[str]:
    """The system calls `names` stand for, with @groups expanded as `systemd-analyze syscall-filter` does."""
    calls = {name for name in names if not name.startswith("@")}
    for group in sorted(names - calls - seen):
        result = systemd_analyze("syscall-filter", group)
        assert result.returncode == 0, result.stderr
        members = {
            line.strip()
            for line in result.stdout.splitlines()[1:]
            if line.strip() and not line.strip().startswith("#")
        }
        calls |= syscall_set(members, seen | {group})
    return calls


def allowed_syscalls(unit: Path) -> set[str]:
    """What the unit's SystemCallFilter= lines let through, in order as systemd applies them: the first
    (an allow list here) sets the default, each later ~ list removes calls and each later list adds some."""
    values = parse_unit(unit)["Service.SystemCallFilter"]
    assert not values[0].startswith("~"), f"{unit.name}: expected the first SystemCallFilter= to allow"
    allowed: set[str] = set()
    for value in values:
        if value.startswith("~"):
            allowed -= syscall_set(set(value[1:].split()))
        else:
            allowed |= syscall_set(set(value.split()))
    return allowed


PROXY_PROTOCOL = "proxy-protocol-udp-forwarder@.service"
# Root without a capability, as the PROXY protocol unit runs it (CapabilityBoundingSet= empty).
NO_CAPABILITY = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


def traced_system_calls(lab: Lab, tmp_path: Path, args: list[str], prefix: list[str]) -> set[str]:
    """The system calls the forwarder makes in service (start, forward two clients, report STATUS=, stop
    on SIGTERM) with `args`, under `prefix` (run in front of strace), as strace counts them."""
    strace = shutil.which("strace")
    assert strace is not None, "strace not found: install the Debian package 'strace'"
    trace = tmp_path / "strace.out"
    lab.build(seed_deployment())
    backend = lab["backend"].udp_socket("192.0.2.2", 27000)
    backend.settimeout(10)
    # -DDD: strace runs as a grandchild (so the traced forwarder keeps the pid LISTEN_PID names) in a
    # session of its own, so stopping the forwarder's process group does not kill it before it writes.
    forwarder = start_forwarder(
        lab["host"],
        [LISTEN],
        ["192.0.2.2:27000"],
        args=["--stats-interval", "0.1", *args],
        command_prefix=[*prefix, strace, "-DDD", "-f", "-qq", "-c", "-U", "name", "-o", str(trace)],
    )

    lab["client"].send_udp(src="203.0.113.7", dst="198.51.100.1", sport=4242, dport=27000, payload=b"first")
    forwarder.wait_ready()
    lab["client"].send_udp(src="203.0.113.8", dst="198.51.100.1", sport=5353, dport=27000, payload=b"second")
    # With --send-proxy-protocol each datagram arrives after its PROXY header.
    received = [backend.recvfrom(65535)[0] for _ in range(2)]
    expected = (b"first", b"second")
    assert all(data.endswith(end) for data, end in zip(received, expected, strict=True)), received
    forwarder.notify.wait_for("STATUS", timeout=5, after=forwarder.notify.wait_for("READY", "1").time)
    assert forwarder.stop() == 0, forwarder.process.output()

    wait_until(lambda: "total" in trace.read_text(), "strace to write its summary", 10)
    lines = [line.strip() for line in trace.read_text().splitlines()]
    used = {line for line in lines if re.fullmatch(r"[a-z0-9_]+", line) and line not in ("syscall", "total")}
    assert {"setsockopt", "sendto", "recvfrom"} & used, f"strace recorded no socket calls: {lines}"
    return used


@pytest.mark.privileged
def test_forwarder_makes_only_system_calls_the_hardened_unit_allows(lab: Lab, tmp_path: Path) -> None:
    used = traced_system_calls(lab, tmp_path, [], [])

    assert used - allowed_syscalls(UNITS / HARDENED) == set()


@pytest.mark.privileged
def test_the_hardened_unit_lets_the_forwarder_drop_its_capabilities(lab: Lab, tmp_path: Path) -> None:
    # --send-proxy-protocol (allowed in OPTIONS=) needs no capability after start-up: it drops them with
    # capset, which SystemCallFilter=~@privileged alone would refuse.
    used = traced_system_calls(lab, tmp_path, ["--send-proxy-protocol"], [])

    assert "capset" in used
    assert used - allowed_syscalls(UNITS / HARDENED) == set()


@pytest.mark.privileged
def test_forwarder_without_capabilities_makes_only_system_calls_the_proxy_protocol_unit_allows(
    lab: Lab, tmp_path: Path
) -> None:
    used = traced_system_calls(lab, tmp_path, ["--send-proxy-protocol"], NO_CAPABILITY)

    assert "capset" not in used  # nothing to drop: no call the unit's filter would refuse
    assert used - allowed_syscalls(UNITS / PROXY_PROTOCOL) == set()


def test_proxy_protocol_service_without_capabilities_has_an_exposure_well_under_1_5(tmp_path: Path) -> None:
    # 1.1: what is left is the host's network (PrivateNetwork=, AF_INET/AF_INET6, AF_UNIX for the notify
    # socket), the host's root directory and ProtectClock='s /dev/rtc read access.
    install_for_checking(tmp_path)

    exposure = exposure_of(tmp_path / instance_name(UNITS / PROXY_PROTOCOL))
    assert exposure <= 1.1
    assert exposure < exposure_of(tmp_path / instance_name(UNITS / HARDENED))


def test_proxy_protocol_service_holds_no_capability_and_sends_headers() -> None:
    settings = parse_unit(UNITS / PROXY_PROTOCOL)
    assert effective_list(settings["Service.CapabilityBoundingSet"]) == set()
    assert effective_list(settings["Service.AmbientCapabilities"]) == set()
    assert settings["Service.PrivateUsers"] == ["yes"]
    assert "--send-proxy-protocol" in shlex.split(settings["Service.ExecStart"][0])
    socket_unit = parse_unit(UNITS / PROXY_PROTOCOL.replace(".service", ".socket"))
    assert "Socket.Transparent" not in socket_unit
