"""io_uring batches (netlab.programs.uring): sendmsg on several sockets in one io_uring_enter, each datagram
from its own socket's address and in order; a bad fd fails alone; refusal of io_uring means None."""

import ctypes
import errno
import socket
from collections.abc import Iterator

import pytest

from forwarder.core.addresses import sockaddr_bytes
from netlab.programs import uring
from netlab.programs.uring import UringSender


@pytest.fixture
def ring() -> Iterator[UringSender]:
    created = UringSender.create(8)
    if created is None:
        pytest.skip("io_uring is not available here")
    yield created
    created.close()


def test_one_enter_sends_each_datagram_from_its_own_socket(ring: UringSender) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2.0)
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
        try:
            for sock in senders:
                sock.bind(("127.0.0.1", 0))
            name = ctypes.create_string_buffer(sockaddr_bytes(socket.AF_INET, receiver.getsockname()), 16)
            payloads = [ctypes.create_string_buffer(b"flow%d" % n, 5) for n in range(3)]
            for sock, payload in zip(senders, payloads, strict=True):
                assert ring.add(sock.fileno(), ctypes.addressof(payload), 5, ctypes.addressof(name), 16)
            assert ring.submit() == [5, 5, 5]
            got = [receiver.recvfrom(64) for _ in range(3)]
            assert got == [(b"flow%d" % n, senders[n].getsockname()) for n in range(3)]
        finally:
            for sock in senders:
                sock.close()


def test_a_bad_fd_fails_alone_and_the_batch_goes_on(ring: UringSender) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2.0)
        name = ctypes.create_string_buffer(sockaddr_bytes(socket.AF_INET, receiver.getsockname()), 16)
        payload = ctypes.create_string_buffer(b"ok", 2)
        ring.add(-1, ctypes.addressof(payload), 2, ctypes.addressof(name), 16)
        ring.add(sender.fileno(), ctypes.addressof(payload), 2, ctypes.addressof(name), 16)
        assert ring.submit() == [-errno.EBADF, 2]
        assert receiver.recvfrom(64)[0] == b"ok"


def test_a_full_batch_refuses_more_until_submitted(ring: UringSender) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        name = ctypes.create_string_buffer(sockaddr_bytes(socket.AF_INET, sock.getsockname()), 16)
        payload = ctypes.create_string_buffer(b"x", 1)
        args = (sock.fileno(), ctypes.addressof(payload), 1, ctypes.addressof(name), 16)
        assert all(ring.add(*args) for _ in range(ring.entries))
        assert not ring.add(*args)
        assert ring.submit() == [1] * ring.entries
        assert ring.add(*args)
        assert ring.submit() == [1]


def test_create_gives_none_where_io_uring_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(entries: int, flags: int) -> None:
        raise OSError(errno.EPERM, "io_uring_setup: Operation not permitted")

    monkeypatch.setattr(uring, "_setup", refuse)
    assert UringSender.create() is None
