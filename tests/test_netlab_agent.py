"""The scapy agent's sending: a full interface queue (ENOBUFS, likely on a loaded machine with a burst
of fragments) is waited out, other errors are not."""

import errno

import pytest

from netlab.programs.agent import send_one


class FlakySocket:
    """Raises the given errors on the first sends, then takes every packet."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.sent: list[object] = []

    def send(self, packet: object) -> None:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, "injected")
        self.sent.append(packet)


def test_a_full_queue_is_waited_out_and_the_packet_sent_once() -> None:
    sock = FlakySocket(errno.ENOBUFS, errno.ENOBUFS)
    send_one(sock, "fragment")
    assert sock.sent == ["fragment"]


def test_another_error_is_raised_at_once() -> None:
    sock = FlakySocket(errno.ENETUNREACH)
    with pytest.raises(OSError, match="injected") as caught:
        send_one(sock, "fragment")
    assert caught.value.errno == errno.ENETUNREACH
    assert sock.sent == []


def test_a_queue_that_never_drains_fails_after_the_patience() -> None:
    sock = FlakySocket(*[errno.ENOBUFS] * 10_000)
    with pytest.raises(OSError, match="injected"):
        send_one(sock, "fragment", patience=0.05)
    assert sock.sent == []
