"""Running a scenario (netlab.scenario.load) in a lab with the lab, expect and activation APIs, and reporting
every expectation as passed or failed. `run_scenario` works in a lab the caller owns (the pytest `lab`
fixture); `run_scenario_file` makes one in a run directory, kept with its logs and pcaps on failure.
"""

import functools
import ipaddress
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netlab.addresses import format_endpoint, split_host_port
from netlab.errors import LabTimeoutError, NetlabError
from netlab.lab.lab import Lab
from netlab.lab.nft import apply_ruleset
from netlab.lab.process import python_env
from netlab.lab.runs import default_runs_dir, keep_failed_run
from netlab.lab.wait import wait_until
from netlab.programs.crafted import Crafted
from netlab.scenario.load import Endpoint, Scenario, TrafficSpec
from netlab.scenario.model import counted
from netlab.service.activation import ForwarderUnderTest, hold_listen_sockets, start_forwarder
from netlab.service.procnet import udp_ports_bound
from netlab.service.relay import install_relay_routing, install_relay_tproxy
from netlab.service.replypath import enable_reply_path
from netlab.traffic.expect import EchoRecord, Inbox, expect
from netlab.traffic.sniff import Sniffer

FORWARDER_START = 15.0  # seconds for READY=1 after the first datagram (a cold Python start on a busy CI)
QUIET = 0.3  # seconds of silence that count as "nothing else arrives"


@dataclass
class Check:
    """One expectation of a scenario and how it went."""

    what: str
    ok: bool
    detail: str = ""


@dataclass
class ScenarioResult:
    """Every check of one run; `run_dir` holds its logs and captures (kept only when it failed)."""

    scenario: Scenario
    checks: list[Check] = field(default_factory=list)
    run_dir: Path | None = None
    kept: bool = False

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    def report(self) -> str:
        """A readable report: one line per check, failures with their details, then the verdict."""
        lines = [f"scenario {self.scenario.name}: {self.scenario.description}"]
        for check in self.checks:
            lines.append(f"  [{'pass' if check.ok else 'FAIL'}] {check.what}")
            if not check.ok and check.detail:
                lines.extend(f"         {line}" for line in check.detail.splitlines())
        failed = sum(not check.ok for check in self.checks)
        verdict = "passed" if self.passed else f"FAILED ({failed} of {len(self.checks)} checks)"
        lines.append(f"{self.scenario.name} {verdict}")
        if self.kept and self.run_dir is not None:
            lines.append(f"logs and captures kept in {self.run_dir}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "file": self.scenario.source,
            "passed": self.passed,
            "checks": [check.__dict__ for check in self.checks],
            "run_dir": str(self.run_dir) if self.kept else None,
        }


class _Run:
    """One execution of a scenario in a lab; each step appends checks, and a failed step does not hide
    the later ones (a forwarder that did not start still gets its arrivals checked and reported)."""

    def __init__(self, scenario: Scenario, lab: Lab) -> None:
        self.scenario = scenario
        self.lab = lab
        self.result = ScenarioResult(scenario, run_dir=lab.workdir)
        self.inboxes: dict[Endpoint, Inbox] = {}
        self.forwarder: ForwarderUnderTest | None = None

    def check(self, what: str, step: Callable[[], object]) -> bool:
        """Run one step and record it as a check: passed, or failed with the error's message."""
        try:
            detail = step()
        except (NetlabError, AssertionError, OSError) as error:
            self.result.checks.append(Check(what, False, str(error)))
            return False
        self.result.checks.append(Check(what, True, detail if isinstance(detail, str) else ""))
        return True

    def prepare(self) -> None:
        scenario, lab = self.scenario, self.lab
        lab.build(scenario.topology)
        for step in scenario.setup:
            node = lab[step.node]
            if step.action == "sysctl":
                for key, value in step.value.items():
                    node.sysctl(key, str(value))
            elif step.action == "command":
                node.check(step.value)
            elif step.action == "background":
                node.run(step.value, label="background")
            else:
                apply_ruleset(node, step.value, label="setup")
        echo_record = lab.workdir / "echo-record.jsonl"
        if scenario.echo is not None:
            ports = scenario.echo.ports
            echo = lab[scenario.echo.node].run(
                [
                    sys.executable,
                    "-m",
                    "netlab.programs.echo",
                    "--record",
                    str(echo_record),
                    *map(str, ports),
                ],
                env=python_env(),
                label="echo",
            )
            wait_until(lambda: set(ports) <= udp_ports_bound(echo.pid), "the echo server to listen", 10)
        if scenario.reply_path is not None:
            spec = scenario.reply_path
            node = lab[spec.node]
            if spec.mode == "relay":
                for backend, ports in spec.relay.items():
                    if spec.reply_tproxy is not None:
                        install_relay_tproxy(node, backend, ports, spec.reply_tproxy)
                    else:
                        install_relay_routing(node, backend, ports)
            else:
                enable_reply_path(node, spec.backend, spec.backend_network, spec.host_address, spec.ports)
        for endpoint in [item.at for item in scenario.expect.arrives] + scenario.expect.nothing_at:
            if endpoint in self.inboxes:
                continue
            echo_spec = scenario.echo
            if echo_spec is not None and endpoint.node == echo_spec.node and endpoint.port in echo_spec.ports:
                self.inboxes[endpoint] = EchoRecord(lab[endpoint.node], endpoint.port, echo_record)
            else:
                self.inboxes[endpoint] = expect(lab[endpoint.node], endpoint.port)
        spec_forwarder = scenario.forwarder
        if spec_forwarder is not None:
            node = lab[spec_forwarder.node]
            held = hold_listen_sockets(node, spec_forwarder.listen) if spec_forwarder.held_sockets else None
            self.forwarder = start_forwarder(
                node,
                spec_forwarder.listen,
                spec_forwarder.destinations,
                fdnames=spec_forwarder.fdnames,
                args=spec_forwarder.args,
                sockets=held,
            )

    def send(self) -> None:
        batch: list[Crafted] = []
        batch_node = ""

        def flush() -> None:
            if batch:
                self.lab[batch_node].send_crafted(list(batch))
                batch.clear()

        for item in self.scenario.traffic:
            if item.expect_reply:
                flush()
                self.check(f"reply to {item.describe()}", functools.partial(self.exchange, item))
                continue
            if item.node != batch_node:
                flush()
                batch_node = item.node
            src = item.src or self.own_address(item)
            batch.append(
                Crafted(src, item.dst, item.sport, item.dport, item.payload, item.count, item.fragment_size)
            )
        flush()

    def own_address(self, item: TrafficSpec) -> str:
        version = ipaddress.ip_address(item.dst).version
        own = [
            address
            for address in self.scenario.topology.addresses_of(item.node)
            if ipaddress.ip_address(address).version == version
        ]
        if not own:
            raise NetlabError(f"node {item.node!r} has no IPv{version} address to send from: give src")
        return own[0]

    def exchange(self, item: TrafficSpec) -> str:
        """Send from a connect()ed socket (which accepts replies only from the address sent to); wait
        `within` seconds. Without the reply, say what came back instead (from which address and port)."""
        node = self.lab[item.node]
        source = item.src or self.own_address(item)
        sock = node.udp_socket(source, item.sport)
        sock.connect((item.dst, item.dport))
        sock.settimeout(item.within)
        expected = format_endpoint(item.dst, item.dport)
        with Sniffer(node.namespace) as sniffer:
            sock.send(item.payload)
            try:
                reply = sock.recv(65535)
            except TimeoutError:
                raise NetlabError(
                    f"no reply from {expected} within {item.within}s"
                    + _other_replies(sniffer, source, item.sport, expected)
                ) from None
        if item.reply_contains is not None and item.reply_contains.encode() not in reply:
            raise NetlabError(f"reply {reply[:80]!r} does not contain {item.reply_contains!r}")
        return f"reply {reply[:80]!r}"

    def verify(self) -> None:
        scenario, expectations = self.scenario, self.scenario.expect
        forwarder = self.forwarder
        if forwarder is not None and expectations.exit_code is None and scenario.traffic:
            self.check("the forwarder starts (READY=1)", lambda: forwarder.wait_ready(FORWARDER_START).value)
        for arrives in expectations.arrives:
            inbox = self.inboxes[arrives.at]
            kwargs: dict[str, Any] = {}
            if arrives.src is not None:
                kwargs["src"] = arrives.src
            if arrives.payload is not None:
                kwargs["payload"] = arrives.payload

            def arrive(inbox: Inbox = inbox, kwargs: dict[str, Any] = kwargs, spec: Any = arrives) -> None:
                inbox.datagrams(count=spec.count, **kwargs).arrive(within=spec.within)

            self.check(arrives.describe(), arrive)
        for endpoint in expectations.nothing_at:
            self.check(f"nothing arrives at {endpoint}", functools.partial(self.quiet, endpoint))
        if expectations.nothing_else:
            for endpoint in sorted({item.at for item in expectations.arrives}, key=str):
                self.check(f"nothing else arrives at {endpoint}", functools.partial(self.quiet, endpoint))
        if forwarder is not None:
            for text in expectations.status:
                self.check(f"a STATUS= line says {text!r}", functools.partial(self.status, text))
        if expectations.doctor_names is not None:
            wanted = sorted(expectations.doctor_names)
            self.check(f"the doctor names exactly {wanted}", lambda: self.doctor(wanted))
        if forwarder is not None:
            if expectations.exit_code is not None:
                code = expectations.exit_code
                self.check(f"the forwarder exits with code {code}", lambda: self.exits(code))
            elif scenario.traffic:
                self.check("the forwarder keeps running and stops with 0 on SIGTERM", self.stops_cleanly)

    def quiet(self, endpoint: Endpoint) -> None:
        self.inboxes[endpoint].nothing_else(QUIET)

    def status(self, text: str) -> str:
        assert self.forwarder is not None
        return self.forwarder.wait_status(lambda value: text in value, timeout=5).value

    def doctor(self, wanted: list[str]) -> str:
        from netlab.doctor.lab import diagnose_lab

        named: list[str] = []

        def matches() -> bool:
            findings = diagnose_lab(self.lab, self.scenario.topology)
            named[:] = sorted({finding.check for finding in findings if not finding.ok})
            return named == wanted

        try:
            wait_until(matches, f"the doctor to name {wanted}", 5)
        except LabTimeoutError:
            raise NetlabError(f"the doctor named {named}, expected {wanted}") from None
        return ", ".join(named) or "nothing missing"

    def exits(self, code: int) -> str:
        assert self.forwarder is not None
        actual = self.forwarder.process.wait(FORWARDER_START)
        if actual != code:
            raise NetlabError(f"exit code {actual}, expected {code}; log:\n{self.forwarder.process.output()}")
        return self.forwarder.process.output().strip()

    def stops_cleanly(self) -> str:
        assert self.forwarder is not None
        if not self.forwarder.is_running():
            process = self.forwarder.process
            raise NetlabError(f"the forwarder exited {process.returncode}; log:\n{process.output()}")
        code = self.forwarder.stop()
        if code != 0:
            raise NetlabError(f"exit code {code} after SIGTERM; log:\n{self.forwarder.process.output()}")
        return "exit code 0"


def _other_replies(sniffer: Sniffer, address: str, port: int, expected: str) -> str:
    """What arrived for address:port from elsewhere than `expected` (a reply the connect()ed socket
    refused), as the rest of the failure's message; empty when nothing came back at all."""
    wanted = ipaddress.ip_address(address)
    expected_address = ipaddress.ip_address(split_host_port(expected)[0])
    sources: dict[str, int] = {}
    fragmented = False
    for seen in sniffer.datagrams(timeout=0.05):
        if seen.direction != "in" or ipaddress.ip_address(seen.dst) != wanted:
            continue
        if seen.sport is None:  # a later fragment: no UDP header, only its source address says whose
            fragmented |= ipaddress.ip_address(seen.src) != expected_address
            continue
        if seen.dport != port:
            continue
        origin = format_endpoint(seen.src, seen.sport)
        if origin != expected:
            sources[origin] = sources.get(origin, 0) + 1
            fragmented |= seen.fragment
    hint = REASSEMBLY_HINT if fragmented else ""
    if not sources:
        return "; nothing came back to " + format_endpoint(address, port) + hint
    listed = ", ".join(f"{origin} ({counted(count, 'datagram')})" for origin, count in sources.items())
    return f"; a reply came from {listed} instead, which the client's connected socket does not accept" + hint


REASSEMBLY_HINT = (
    "; it came in fragments (larger than the path MTU), and only the first fragment carries the UDP "
    "ports a relay rule matches: the host must reassemble before routing (connection tracking on, as "
    "any stateful nftables rule does; see the README's relay recipe, fragmented replies)"
)


def run_scenario(scenario: Scenario, lab: Lab) -> ScenarioResult:
    """Build the scenario in `lab` (empty), send its traffic, and check every expectation."""
    run = _Run(scenario, lab)
    if run.check("the lab and the forwarder are set up", run.prepare):
        if scenario.traffic:
            run.check(f"the traffic is sent ({counted(len(scenario.traffic), 'item')})", run.send)
        run.verify()
    return run.result


def run_scenario_file(scenario: Scenario, runs: str | Path | None = None) -> ScenarioResult:
    """Run `scenario` in its own lab in RUNS/run-NAME-TIME (kept, with logs and pcaps, if it fails)."""
    base = Path(runs) if runs else default_runs_dir()
    run_dir = base / f"run-{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6}"
    with Lab(workdir=run_dir, capture=True, description=f"netlab run {scenario.source}") as lab:
        result = run_scenario(scenario, lab)
    result.run_dir = run_dir
    if result.passed:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        result.kept = True
        keep_failed_run(run_dir)
    return result


__all__ = ["Check", "ScenarioResult", "run_scenario", "run_scenario_file"]
