"""The recvmmsg receiver: several datagrams per call, with each sender's raw address decoded exactly as the
socket module would, on IPv4 and IPv6 sockets sharing one receiver."""

import errno
import socket
from collections.abc import Iterator

import pytest

from forwarder.core.addresses import decode_sockaddr, sockaddr_bytes
from forwarder.io.batch import NAME_LENGTH, BatchReceiver, BatchSender


@pytest.fixture
def receiver() -> BatchReceiver:
    created = BatchReceiver.create(batch=4, buffer_size=128)
    assert created is not None, "this libc has recvmmsg"
    return created


def bound(family: socket.AddressFamily, address: str) -> Iterator[socket.socket]:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        sock.setblocking(False)
        yield sock


@pytest.fixture
def v4() -> Iterator[socket.socket]:
    yield from bound(socket.AF_INET, "127.0.0.1")


@pytest.fixture
def v6() -> Iterator[socket.socket]:
    yield from bound(socket.AF_INET6, "::1")


def received(receiver: BatchReceiver, sock: socket.socket) -> list[tuple[bytes, object, bool]]:
    """(payload, decoded sender, truncated) for what one receive() call returned."""
    count = receiver.receive(sock.fileno())
    out: list[tuple[bytes, object, bool]] = []
    for length, flags, name, offset in receiver.slots[:count]:
        raw = bytes(receiver.name_view[name : name + NAME_LENGTH[sock.family]])
        payload = bytes(receiver.view[offset : offset + receiver.u32[length]])
        out.append((payload, decode_sockaddr(raw), bool(receiver.u32[flags] & socket.MSG_TRUNC)))
    return out


def send_from(
    family: socket.AddressFamily, address: str, target: socket.socket, payloads: list[bytes]
) -> object:
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.bind((address, 0))
        for payload in payloads:
            client.sendto(payload, target.getsockname())
        return client.getsockname()


def test_one_call_returns_up_to_a_batch_and_the_rest_stays_queued(
    receiver: BatchReceiver, v4: socket.socket
) -> None:
    client = send_from(socket.AF_INET, "127.0.0.1", v4, [b"a", b"", b"ccc", b"dd", b"e"])
    assert received(receiver, v4) == [
        (b"a", client, False),
        (b"", client, False),
        (b"ccc", client, False),
        (b"dd", client, False),
    ]
    assert received(receiver, v4) == [(b"e", client, False)]
    assert receiver.receive(v4.fileno()) == 0


def test_a_datagram_larger_than_the_buffer_is_flagged_truncated(
    receiver: BatchReceiver, v4: socket.socket
) -> None:
    send_from(socket.AF_INET, "127.0.0.1", v4, [b"x" * 200, b"ok"])
    (big, _, big_truncated), (small, _, small_truncated) = received(receiver, v4)
    assert (len(big), big_truncated) == (128, True)
    assert (small, small_truncated) == (b"ok", False)


def test_sender_addresses_decode_like_the_socket_module_across_families(
    receiver: BatchReceiver, v4: socket.socket, v6: socket.socket
) -> None:
    # The name length is an in/out field: after an IPv4 batch it must not cut the next IPv6 address short.
    v4_client = send_from(socket.AF_INET, "127.0.0.1", v4, [b"four"])
    v6_client = send_from(socket.AF_INET6, "::1", v6, [b"six"])
    assert received(receiver, v4) == [(b"four", v4_client, False)]
    assert received(receiver, v6) == [(b"six", v6_client, False)]


def test_a_v4_mapped_client_of_a_dual_stack_socket_decodes_as_the_socket_module_gives_it() -> None:
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as dual,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as reference,
    ):
        for sock in (dual, reference):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"m", ("127.0.0.1", dual.getsockname()[1]))
            client.sendto(b"m", ("127.0.0.1", reference.getsockname()[1]))
        receiver = BatchReceiver.create(batch=2, buffer_size=64)
        assert receiver is not None
        dual.setblocking(False)
        _, expected = reference.recvfrom(64)
        [(_, decoded, _)] = received(receiver, dual)
    assert decoded == expected
    assert str(expected[0]).startswith("::ffff:127.0.0.1")


def test_a_run_leaves_in_one_sendmmsg_intact_and_in_order(receiver: BatchReceiver, v4: socket.socket) -> None:
    sender = BatchSender.create(receiver)
    assert sender is not None, "this libc has sendmmsg"
    send_from(socket.AF_INET, "127.0.0.1", v4, [b"one", b"", b"three"])
    assert receiver.receive(v4.fileno()) == 3
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as backend,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out,
    ):
        backend.bind(("127.0.0.1", 0))
        backend.settimeout(5)
        sender.aim(socket.AF_INET, backend.getsockname())
        assert sender.send_run(out.fileno(), 0, 3) == (3, 0)
        assert [backend.recv(64) for _ in range(3)] == [b"one", b"", b"three"]


def test_a_run_that_fails_reports_the_errno_of_its_first_unsent_datagram(
    receiver: BatchReceiver, v4: socket.socket
) -> None:
    sender = BatchSender.create(receiver)
    assert sender is not None
    send_from(socket.AF_INET, "127.0.0.1", v4, [b"a", b"b"])
    assert receiver.receive(v4.fileno()) == 2
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        sender.aim(socket.AF_INET6, ("::1", 9))  # an IPv6 destination cannot be reached from an IPv4 socket
        sent, error = sender.send_run(out.fileno(), 0, 2)
    assert sent == 0
    assert error in (errno.EAFNOSUPPORT, errno.EINVAL)


def test_sockaddr_bytes_round_trip_through_decode() -> None:
    assert decode_sockaddr(sockaddr_bytes(socket.AF_INET, ("192.0.2.2", 27000))) == ("192.0.2.2", 27000)
    assert decode_sockaddr(sockaddr_bytes(socket.AF_INET6, ("2001:db8::2", 53))) == ("2001:db8::2", 53, 0, 0)
    scoped = ("fe80::7", 53, 5, 2)  # flow info and scope id survive: the single path's keys match the batch's
    assert decode_sockaddr(sockaddr_bytes(socket.AF_INET6, scoped)) == scoped


def test_the_single_paths_encoding_of_a_received_address_is_the_raw_sockaddr_recvmmsg_writes(
    receiver: BatchReceiver, v6: socket.socket
) -> None:
    client = send_from(socket.AF_INET6, "::1", v6, [b"x"])
    assert receiver.receive(v6.fileno()) == 1
    raw = bytes(receiver.name_view[0 : NAME_LENGTH[socket.AF_INET6]])
    assert sockaddr_bytes(socket.AF_INET6, client) == raw  # type: ignore[arg-type]
