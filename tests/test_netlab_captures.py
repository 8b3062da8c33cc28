"""Captures and run directories: a pcap per node interface; kept, and named in the report, when a test
fails; removed when it passes."""

from pathlib import Path

import pytest

from netlab import Lab
from netlab.lab.capture import read_pcap
from netlab.pytest_plugin import run_dir_name
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged

INNER = """
import pytest
from netlab.traffic.expect import expect
from netlab.topology.shipped import seed_deployment

pytestmark = pytest.mark.privileged

def test_passes(lab):
    lab.build(seed_deployment())
    lab["client"].send_fast(dst="198.51.100.1", dport=9, payloads=[b"x"])

def test_fails(lab):
    lab.build(seed_deployment())
    inbox = expect(lab["host"], port=27000)
    lab["client"].send_fast(src="203.0.113.9", sport=1, dst="198.51.100.1", dport=27000, payloads=[b"x"])
    inbox.datagram(src="203.0.113.7:4242").arrives(within=0.5)
"""


def test_every_interface_is_recorded_to_its_own_pcap(lab: Lab) -> None:
    lab.build(seed_deployment())
    lab["client"].send_fast(src="203.0.113.7", sport=4242, dst="198.51.100.1", dport=9, payloads=[b"marker"])
    lab.captures.close()
    names = sorted(path.name for path in lab.captures.paths)
    assert names == [
        "backend-to-host.pcap",
        "client-to-host.pcap",
        "host-to-backend.pcap",
        "host-to-client.pcap",
    ]
    for name in ("client-to-host.pcap", "host-to-client.pcap"):
        assert any(frame.endswith(b"marker") for frame in read_pcap(lab.workdir / "captures" / name)), name
    assert not any(
        frame.endswith(b"marker") for frame in read_pcap(lab.workdir / "captures" / "host-to-backend.pcap")
    )


def test_a_failing_test_keeps_a_run_directory_of_its_own_and_the_report_names_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    checkout = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("PYTHONPATH", str(checkout))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    runs = tmp_path / "runs"
    # What another session running the same tests keeps under the same name must survive this run.
    others = [runs / run_dir_name(f"test_inner.py::{name}", "main") for name in ("test_fails", "test_passes")]
    for other in others:
        (other / "captures").mkdir(parents=True)
        (other / "captures" / "host-to-client.pcap").write_bytes(b"another session's capture")
    pytester.makepyfile(test_inner=INNER)

    result = pytester.runpytest_subprocess(
        "-p",
        "netlab.pytest_plugin",
        "-p",
        "no:benchmark",
        "-p",
        "no:cacheprovider",
        f"--netlab-runs={runs}",  # one argument: an existing directory would count in choosing rootdir
    )

    result.assert_outcomes(passed=1, failed=1)
    (failed_dir,) = set(runs.glob(run_dir_name("test_inner.py::test_fails", "main") + "-*"))
    assert not list(runs.glob(run_dir_name("test_inner.py::test_passes", "main") + "-*"))
    result.stdout.fnmatch_lines(
        ["*netlab run directory*", f"*logs and captures of this test are kept in {failed_dir}"]
    )
    result.stdout.fnmatch_lines(
        ["*closest arrival (#1)*", "*source   203.0.113.7:4242*203.0.113.9:1  <- differs"]
    )
    assert sorted(path.name for path in (failed_dir / "captures").iterdir()) == [
        "backend-to-host.pcap",
        "client-to-host.pcap",
        "host-to-backend.pcap",
        "host-to-client.pcap",
    ]
    for other in others:
        assert (other / "captures" / "host-to-client.pcap").read_bytes() == b"another session's capture"


def test_run_directory_names_carry_the_worker_and_a_file_safe_test_id() -> None:
    assert run_dir_name("tests/test_x.py::test_y[a/b c]", "gw3") == "gw3-tests_test_x.py_test_y_a_b_c_"
