"""UDP GSO runs (forwarder.io.gso): how a sequence of datagrams of one flow is cut into runs, that a run sent
over loopback arrives as separate, intact datagrams, and the fallbacks when a GSO send is refused."""

import ctypes
import errno
import socket
from collections.abc import Iterator, Sequence

import pytest

from forwarder.io import gso as gso_module
from forwarder.io.gso import MAX_SEGMENTS, BatchGso, Run, plan_runs, probe_gso
from forwarder.io.linux import IOVec
from netlab.programs.send_paths import GsoSender


def test_equal_datagrams_form_one_run_closed_by_a_shorter_one() -> None:
    assert plan_runs([64, 64, 64, 20, 64]) == [Run(0, 4, 64), Run(4, 1, 64)]


def test_a_longer_datagram_starts_a_new_run() -> None:
    assert plan_runs([64, 64, 100, 100]) == [Run(0, 2, 64), Run(2, 2, 100)]


def test_an_empty_datagram_never_joins_a_run() -> None:
    assert plan_runs([64, 64, 0, 0]) == [Run(0, 2, 64), Run(2, 1, 0), Run(3, 1, 0)]


def test_runs_hold_at_most_max_segments_and_a_maximal_datagram() -> None:
    assert [run.length for run in plan_runs([10] * (MAX_SEGMENTS + 5))] == [MAX_SEGMENTS, 5]
    assert [run.length for run in plan_runs([1400] * 50)] == [46, 4]  # 46 x 1400 <= 65507 < 47 x 1400


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2.0)
        sender.bind(("127.0.0.1", 0))
        yield sender, receiver


def received(receiver: socket.socket, count: int) -> list[tuple[bytes, tuple[str, int]]]:
    return [receiver.recvfrom(65536) for _ in range(count)]


@pytest.mark.skipif(not probe_gso(), reason="this kernel has no UDP_SEGMENT")
def test_a_run_arrives_as_separate_intact_datagrams_from_the_sender(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    sender, receiver = pair
    payloads = [bytes([65 + n]) * 100 for n in range(9)] + [b"tail"]
    gso = GsoSender()
    assert gso.send(sender, payloads, receiver.getsockname()) == (10, 0)
    assert gso.fallbacks == 0
    got = received(receiver, 10)
    assert [data for data, _ in got] == payloads
    assert {source for _, source in got} == {sender.getsockname()}


class RefusingSocket:
    """A socket whose GSO send fails with `error`; plain sends are recorded."""

    family = socket.AF_INET

    def __init__(self, error: int) -> None:
        self.error = error
        self.plain: list[bytes] = []

    def sendmsg(self, buffers: Sequence[bytes], *_: object) -> int:
        raise OSError(self.error, "refused")

    def sendto(self, payload: bytes, _destination: object) -> int:
        self.plain.append(bytes(payload))
        return len(payload)


def test_without_checksum_offload_the_run_goes_one_by_one_and_gso_stays_off() -> None:
    sock = RefusingSocket(errno.EIO)
    gso = GsoSender(enabled=True)
    assert gso.send(sock, [b"ab", b"cd", b"e"], ("192.0.2.2", 9)) == (3, 0)  # type: ignore[arg-type]
    assert sock.plain == [b"ab", b"cd", b"e"]
    assert not gso.enabled
    assert gso.disabled is not None
    assert "EIO" in gso.disabled


def test_a_segment_above_the_mtu_falls_back_for_that_run_only() -> None:
    sock = RefusingSocket(errno.EMSGSIZE)
    gso = GsoSender(enabled=True)
    assert gso.send(sock, [b"ab", b"cd"], ("192.0.2.2", 9)) == (2, 0)  # type: ignore[arg-type]
    assert gso.enabled
    assert gso.fallbacks == 1


def test_a_refused_run_fails_whole_with_its_errno() -> None:
    sock = RefusingSocket(errno.EPERM)
    gso = GsoSender(enabled=True)
    assert gso.send(sock, [b"ab", b"cd"], ("192.0.2.2", 9)) == (0, errno.EPERM)  # type: ignore[arg-type]
    assert sock.plain == []


class RefusingSendmsg:
    """A libc sendmsg stand-in that fails every call with `error` (as the kernel would) and counts calls."""

    def __init__(self, error: int) -> None:
        self.error = error
        self.calls = 0

    def __call__(self, fd: int, header: int, flags: int) -> int:
        self.calls += 1
        ctypes.set_errno(self.error)
        return -1


def test_a_run_beyond_the_path_mtu_makes_larger_segments_skip_gso_from_then_on() -> None:
    refusing = RefusingSendmsg(errno.EMSGSIZE)
    gso = BatchGso(refusing, (IOVec * 4)())
    assert gso.send(3, 0, 2, 3000) == errno.EMSGSIZE
    assert gso.largest == 2999  # the engine sends runs of 3000 B and more datagram by datagram now
    assert gso.send(3, 0, 2, 1200) == errno.EMSGSIZE
    assert gso.largest == 1199


@pytest.mark.parametrize("error", [errno.EIO, errno.ENOPROTOOPT])
def test_a_device_without_segmentation_turns_gso_off(error: int) -> None:
    gso = BatchGso(RefusingSendmsg(error), (IOVec * 4)())
    assert gso.send(3, 0, 2, 64) == error
    assert gso.largest == 0  # no segment size fits: every run goes datagram by datagram


def test_another_error_leaves_gso_on_for_the_next_run() -> None:
    gso = BatchGso(RefusingSendmsg(errno.EPERM), (IOVec * 4)())  # a firewall refused this run
    assert gso.send(3, 0, 2, 64) == errno.EPERM
    assert gso.largest > 64


def test_without_udp_segment_in_the_kernel_there_is_no_batch_gso(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gso_module, "probe_gso", lambda: False)
    assert BatchGso.create((IOVec * 4)()) is None


def test_a_kernel_refusing_udp_segment_is_probed_as_without_gso(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoSegment(socket.socket):
        def setsockopt(self, *args: object) -> None:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    monkeypatch.setattr(socket, "socket", NoSegment)
    assert probe_gso() is False
