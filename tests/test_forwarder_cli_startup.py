"""Start-up decisions of the CLI taken in-process: option values refused or accepted, the file-descriptor
limit fitted to --max-flows, the raw send path's fall-back without CAP_NET_RAW, and the failures at
start-up that are warnings (capabilities kept, replies' route unknown) or an OS error's exit code.

The kernel's refusals (setrlimit, raw sockets without CAP_NET_RAW, capset under seccomp) are stood in for
by raising the error the kernel gives: the decisions around them are what is pinned here; the lab tests
drop real capabilities (tests/test_e2e_raw_send.py, tests/test_e2e_service.py).
"""

import errno
import logging
import resource
import socket
from pathlib import Path

import pytest

from forwarder.core.destination import Destination
from forwarder.core.settings import Settings
from forwarder.errors import MissingPermissionError
from forwarder.io import capabilities
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.service import cli, options


def test_a_max_flows_of_zero_is_a_usage_error_naming_the_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert cli.main(["--max-flows", "0", "192.0.2.2:53"]) == 64
    assert "--max-flows: '0' must be greater than 0" in capsys.readouterr().err


def test_an_existing_regular_metrics_file_is_accepted_to_be_replaced(tmp_path: Path) -> None:
    existing = tmp_path / "forwarder.prom"
    existing.write_text("# old\n")
    parsed = options.build_parser().parse_args(["--metrics-file", str(existing), "192.0.2.2:53"])
    assert parsed.metrics_file == existing


def test_a_reply_route_that_cannot_be_checked_is_a_warning_naming_the_destination(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreadable(destination: Destination, is_local: object) -> str | None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cli, "reply_route_warning", unreadable)
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener:
        listener.bind(("127.0.0.1", 0))
        route = Route(ListeningSocket(listener, "dns"), Destination(socket.AF_INET, "192.0.2.2", 53))
        with caplog.at_level(logging.WARNING, logger="forwarder"):
            cli.warn_of_reply_routes([route, route])  # one warning per destination

    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "--reply relay: cannot check the route of replies from 192.0.2.2:53: [Errno 13] Permission denied"
    ]


def test_without_a_file_descriptor_limit_max_flows_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    monkeypatch.setattr(resource, "getrlimit", lambda kind: unlimited)
    assert cli.fit_max_flows(1_000_000, 2) == 1_000_000


def test_a_limit_that_cannot_be_raised_lowers_max_flows_to_fit_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(kind: int, limits: tuple[int, int]) -> None:
        raise ValueError("not allowed to raise maximum limit")

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", refused)
    with caplog.at_level(logging.WARNING, logger="forwarder"):
        fitted = cli.fit_max_flows(5000, 2)

    assert fitted == 1024 - 2 - cli.FD_RESERVE
    assert f"--max-flows 5000 lowered to {fitted} to fit RLIMIT_NOFILE 1024" in caplog.text


def test_without_cap_net_raw_the_raw_send_path_falls_back_to_per_client_sockets_saying_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    opened: list[socket.socket] = []

    def raw_socket_of_ipv4_only(family: socket.AddressFamily) -> socket.socket:
        if family == socket.AF_INET6:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        opened.append(socket.socket(family, socket.SOCK_DGRAM))
        return opened[-1]

    monkeypatch.setattr(cli, "open_raw_socket", raw_socket_of_ipv4_only)
    monkeypatch.setattr(cli, "check_transparent_capability", lambda families: None)  # CAP_NET_ADMIN held
    with caplog.at_level(logging.WARNING, logger="forwarder"):
        sender = cli.open_send_path(Settings(send_path="raw"), {socket.AF_INET, socket.AF_INET6})

    assert sender is None
    assert [sock.fileno() for sock in opened] == [-1]  # the IPv4 one is not left open
    assert "cannot open a raw socket (Operation not permitted: CAP_NET_RAW is missing)" in caplog.text


def test_without_cap_net_raw_nor_cap_net_admin_the_raw_send_path_names_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(family: socket.AddressFamily) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    def no_transparency(families: set[socket.AddressFamily]) -> None:
        raise MissingPermissionError("cannot set IP_TRANSPARENT")

    monkeypatch.setattr(cli, "open_raw_socket", refused)
    monkeypatch.setattr(cli, "check_transparent_capability", no_transparency)
    with pytest.raises(MissingPermissionError, match=r"raw socket \(CAP_NET_RAW\) nor set IP_TRANSPARENT"):
        cli.open_send_path(Settings(send_path="raw"), {socket.AF_INET})


def test_capabilities_that_cannot_be_dropped_are_a_warning_not_a_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def denied() -> int:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(capabilities, "drop_all", denied)
    with caplog.at_level(logging.WARNING, logger="forwarder"):
        cli.drop_capabilities()

    assert "could not drop the capabilities no longer needed" in caplog.text
    assert "forwarding with them" in caplog.text


def test_an_os_error_at_set_up_exits_71_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def out_of_descriptors(argv: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(cli, "run", out_of_descriptors)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)

    assert cli.main(["192.0.2.2:53"]) == 71
    assert capsys.readouterr().err == f"{options.PROG}: set-up failed: Too many open files (errno 24)\n"
