"""The lab's notify receiver reports what it received readably: each distinct line once, with a count."""

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab.errors import LabTimeoutError
from netlab.service.notify import NotifyReceiver


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    with tempfile.TemporaryDirectory(prefix="nl-") as directory:  # AF_UNIX paths are short
        receiving = NotifyReceiver(Path(directory) / "notify.sock")
        try:
            yield receiving
        finally:
            receiving.close()


def notify(receiver: NotifyReceiver, *messages: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as service:
        for message in messages:
            service.sendto(message, str(receiver.path))


def test_a_timeout_lists_each_status_line_once_with_how_often_it_came(receiver: NotifyReceiver) -> None:
    status = b"STATUS=0 datagrams forwarded in the last 0.2 seconds, 0 dropped; since start 0 forwarded"
    notify(receiver, b"READY=1", status, status, status)
    receiver.wait_for("STATUS", timeout=5)
    receiver.wait_for("STATUS", lambda value: len(receiver.values("STATUS")) == 3, timeout=5)
    with pytest.raises(LabTimeoutError) as caught:
        receiver.wait_status(lambda value: "1 dropped" in value, timeout=0.05)
    assert str(caught.value).endswith(
        "received so far:\n"
        "    READY=1\n"
        "    STATUS=0 datagrams forwarded in the last 0.2 seconds, 0 dropped; since start 0 forwarded   (x3)"
    )


def test_a_timeout_with_nothing_received_says_so(receiver: NotifyReceiver) -> None:
    with pytest.raises(LabTimeoutError, match=r"received so far:\n    \(nothing\)$"):
        receiver.wait_ready(timeout=0.05)
