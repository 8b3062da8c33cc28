"""The raw send path without privileges: the IPv4 checksum against scapy's, the messages a batch builds
(UDP header, control message, name, payload iovec), the retry of a pending ICMP error and the cost of a
failure, which send paths need a capability after start-up, and the options' usage errors."""

import ctypes
import errno
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP

from forwarder.core.destination import Destination
from forwarder.core.flows import Flow, Path
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import Settings
from forwarder.io.engine import Engine
from forwarder.io.flow_sockets import open_once_socket
from forwarder.io.linux import IP_TRANSPARENT, IOVec, MMsgHdr
from forwarder.io.listeners import ListeningSocket, Route
from forwarder.io.rawsend import CONTROL_LENGTH, RawBatch, RawFlow, RawSend, udp_checksum
from forwarder.service.notify import Notifier
from netlab.lab.process import python_env

PATH = Path("test", Destination(socket.AF_INET, "192.0.2.2", 27000))


def flow_of(source: tuple[str, int], path: Path = PATH) -> Flow:
    return Flow((path.target, repr(source).encode()), path, source, source)


class FakeSendmmsg:
    """sendmmsg as the kernel answers it: `answers` in turn (a count sent, or -errno), recording each call's
    messages as (UDP header, payload, control data)."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.calls: list[list[tuple[bytes, bytes, bytes]]] = []

    def __call__(self, fd: int, address: int, count: int, flags: int) -> int:
        headers = (MMsgHdr * count).from_address(address)
        messages = []
        for header in headers:
            iovecs = (IOVec * 2).from_address(header.msg_hdr.msg_iov)
            udp = ctypes.string_at(iovecs[0].iov_base, iovecs[0].iov_len)
            payload = ctypes.string_at(iovecs[1].iov_base, iovecs[1].iov_len)
            control = ctypes.string_at(header.msg_hdr.msg_control, header.msg_hdr.msg_controllen)
            messages.append((udp, payload, control))
        self.calls.append(messages)
        answer = self.answers.pop(0) if self.answers else count
        if answer < 0:
            ctypes.set_errno(-answer)
            return -1
        return answer


def no_icmp_error(sock: socket.socket, error_number: int) -> bool:
    return False


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        yield udp


@pytest.mark.parametrize("size", [0, 1, 5, 6, 1001, 1472, 65507])
def test_the_ipv4_checksum_is_the_one_scapy_computes(sock: socket.socket, size: int) -> None:
    payload = bytes((index * 7 + size) % 256 for index in range(size))
    flow = RawFlow(RawBatch(sock, FakeSendmmsg([]), 1, True), ("203.0.113.7", 4242), PATH.target)

    packet = IP(src="203.0.113.7", dst="192.0.2.2") / UDP(sport=4242, dport=27000) / payload

    assert udp_checksum(flow.partial, size + 8, payload) == IP(bytes(packet))[UDP].chksum


def test_a_checksum_that_sums_to_zero_is_sent_as_all_ones() -> None:
    # partial + 2 * length = 0xFFFF (= 0 modulo 0xFFFF): the ones' complement sum is 0xFFFF, its
    # complement 0, which would read as "no checksum".
    assert udp_checksum(0xFFFF - 16, 8, b"") == 0xFFFF


def queued(batch: RawBatch, flows: list[Flow], payloads: list[bytes]) -> list[bytearray]:
    buffers = [bytearray(payload) for payload in payloads]
    for flow, buffer in zip(flows, buffers, strict=True):
        if flow.raw is None:  # prepared once, as the engine does when the flow opens
            flow.raw = RawFlow(batch, flow.presented, flow.path.target)
        address = ctypes.addressof((ctypes.c_char * max(len(buffer), 1)).from_buffer(buffer)) if buffer else 0
        assert isinstance(flow.raw, RawFlow)
        batch.queue(flow, flow.raw, address, len(buffer))
    return buffers  # the iovecs point into them: keep them alive until the flush


def test_a_batch_sends_each_clients_header_source_and_payload_in_one_call(sock: socket.socket) -> None:
    fake = FakeSendmmsg([])
    batch = RawBatch(sock, fake, 8, checksum=False)
    flows = [flow_of(("203.0.113.7", 4242)), flow_of(("203.0.113.8", 53)), flow_of(("203.0.113.7", 4242))]
    kept = queued(batch, [flows[0], flows[1], flows[0]], [b"one", b"", b"three"])
    failed: list[tuple[Flow, int]] = []

    batch.flush(failed, no_icmp_error)

    assert (len(fake.calls), failed, bytes(kept[0])) == (1, [], b"one")
    (first, second, third) = fake.calls[0]
    assert first[0] == struct.pack("!HHHH", 4242, 27000, 11, 0)
    assert second[0] == struct.pack("!HHHH", 53, 27000, 8, 0)
    assert [message[1] for message in fake.calls[0]] == [b"one", b"", b"three"]
    # struct in_pktinfo after the cmsghdr: ifindex 0, ipi_spec_dst = the client, ipi_addr unused.
    header = socket.CMSG_LEN(0)
    assert first[2][header : header + 12] == bytes(4) + socket.inet_aton("203.0.113.7") + bytes(4)
    assert second[2][header : header + 12] == bytes(4) + socket.inet_aton("203.0.113.8") + bytes(4)
    assert len(third[2]) == CONTROL_LENGTH[socket.AF_INET]
    assert third == (struct.pack("!HHHH", 4242, 27000, 13, 0), b"three", first[2])


def test_a_slot_reused_by_another_flow_size_or_buffer_sends_what_it_holds_now(sock: socket.socket) -> None:
    # A slot rewrites only what changed since its last datagram: each change must still reach the kernel.
    fake = FakeSendmmsg([])
    batch = RawBatch(sock, fake, 2, checksum=False)
    one, two = flow_of(("203.0.113.7", 4242)), flow_of(("203.0.113.8", 53))
    rounds = [
        ([one, two], [b"first", b"x"]),
        ([one, two], [b"again", b"y"]),  # same flows and sizes, other buffers
        ([two, one], [b"", b"longer one"]),  # flows swapped, sizes changed
        ([two, two], [b"zz", b"zz"]),
    ]
    for flows, payloads in rounds:
        kept = queued(batch, flows, payloads)
        batch.flush([], no_icmp_error)
        del kept

    header = socket.CMSG_LEN(0)
    for call, (flows, payloads) in zip(fake.calls, rounds, strict=True):
        for (udp, payload, control), flow, sent in zip(call, flows, payloads, strict=True):
            assert udp == struct.pack("!HHHH", flow.presented[1], 27000, 8 + len(sent), 0)
            assert payload == sent
            assert control[header + 4 : header + 8] == socket.inet_aton(flow.presented[0])


def test_an_ipv6_messages_control_fits_the_kernels_stack_buffer_so_it_costs_no_kmalloc() -> None:
    # ____sys_sendmsg copies up to sizeof(struct cmsghdr) + 20 bytes (an in6_pktinfo) to its stack; a
    # longer msg_controllen (CMSG_SPACE(20) = 40) is a sock_kmalloc and a kfree per datagram.
    path = Path("test6", Destination(socket.AF_INET6, "2001:db8:2::2", 27000))
    fake = FakeSendmmsg([])
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock6:
        batch = RawBatch(sock6, fake, 4, checksum=False)
        kept = queued(batch, [flow_of(("2001:db8::7", 4242), path)], [b"six"])
        batch.flush([], no_icmp_error)

    ((udp, payload, control),) = fake.calls[0]
    assert len(control) <= socket.CMSG_LEN(0) + 20
    # struct in6_pktinfo after the cmsghdr: the client's address, then ifindex 0.
    assert control[socket.CMSG_LEN(0) :] == socket.inet_pton(socket.AF_INET6, "2001:db8::7") + bytes(4)
    assert (udp, payload, bytes(kept[0])) == (struct.pack("!HHHH", 4242, 27000, 11, 0), b"six", b"six")


def test_a_pending_icmp_error_is_tried_again_and_costs_no_datagram(sock: socket.socket) -> None:
    fake = FakeSendmmsg([1, -errno.ECONNREFUSED, 2])
    batch = RawBatch(sock, fake, 8, checksum=False)
    flow = flow_of(("203.0.113.7", 4242))
    kept = queued(batch, [flow] * 3, [b"a", b"b", b"c"])
    failed: list[tuple[Flow, int]] = []
    queues: list[int] = []

    def refused_before(sock: socket.socket, error_number: int) -> bool:  # the error queue held it
        queues.append(error_number)
        return error_number == errno.ECONNREFUSED

    batch.flush(failed, refused_before)

    assert (failed, len(kept)) == ([], 3)
    sent = [[message[1] for message in call] for call in fake.calls]
    assert sent == [[b"a", b"b", b"c"], [b"b", b"c"], [b"b", b"c"]]
    assert queues == [errno.ECONNREFUSED]


def test_a_failure_the_error_queue_does_not_explain_is_the_datagrams_own(sock: socket.socket) -> None:
    fake = FakeSendmmsg([-errno.ECONNREFUSED, 1])
    batch = RawBatch(sock, fake, 8, checksum=False)
    flows = [flow_of(("203.0.113.7", 4242)), flow_of(("203.0.113.8", 4242))]
    kept = queued(batch, flows, [b"a", b"b"])
    failed: list[tuple[Flow, int]] = []

    batch.flush(failed, no_icmp_error)

    assert (failed, len(kept)) == ([(flows[0], errno.ECONNREFUSED)], 2)


def test_a_refused_datagram_costs_only_itself(sock: socket.socket) -> None:
    fake = FakeSendmmsg([1, -errno.EPERM, 1])
    batch = RawBatch(sock, fake, 8, checksum=False)
    flows = [flow_of(("203.0.113.7", 4242)), flow_of(("203.0.113.8", 4242)), flow_of(("203.0.113.9", 4242))]
    kept = queued(batch, flows, [b"a", b"X", b"c"])
    failed: list[tuple[Flow, int]] = []

    batch.flush(failed, no_icmp_error)

    assert (failed, len(kept)) == ([(flows[1], errno.EPERM)], 3)
    assert [[message[1] for message in call] for call in fake.calls] == [
        [b"a", b"X", b"c"],
        [b"X", b"c"],
        [b"c"],
    ]


def engine(
    sock: socket.socket, *, raw: bool, relay: bool = False, send_proxy_protocol: bool = False
) -> Engine:
    """An engine listening on `sock`; on the raw path `sock` stands in for its raw socket too (the property
    asked here sends nothing)."""
    route = Route(ListeningSocket(sock, "test"), Destination(socket.AF_INET, "192.0.2.2", 53))
    machine = ForwardingMachine(
        Settings(reply="relay" if relay else "direct", send_proxy_protocol=send_proxy_protocol)
    )
    sender = RawSend([sock], 8, checksum=False) if raw else None
    return Engine([route], Notifier({}), machine, raw=sender)


@pytest.mark.parametrize(
    ("raw", "relay", "send_proxy_protocol", "needed"),
    [
        (True, False, False, False),  # direct mode on the raw path: nothing after start-up
        (True, True, False, True),  # relay mode's flow sockets are bound to the client's address
        (False, False, False, True),  # a transparent socket per client
        (False, True, False, True),
        (False, True, True, False),  # --send-proxy-protocol sends from the host's own address
        (True, True, True, False),
    ],
)
def test_which_send_paths_need_a_capability_after_start_up(
    sock: socket.socket, raw: bool, relay: bool, send_proxy_protocol: bool, needed: bool
) -> None:
    sock.bind(("127.0.0.1", 0))
    assert (
        engine(sock, raw=raw, relay=relay, send_proxy_protocol=send_proxy_protocol).needs_capability is needed
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--udp-checksum", "sometimes"], "argument --udp-checksum: invalid choice: 'sometimes'"),
        (["--send-path", "xdp"], "argument --send-path: invalid choice: 'xdp'"),
        (["--gso", "--send-path", "raw"], "--gso with --send-path raw"),
    ],
)
def test_a_bad_send_path_option_is_a_usage_error_naming_it(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "forwarder", *argv, "192.0.2.2"],
        capture_output=True,
        text=True,
        env=python_env(),
        check=False,
        timeout=30,
    )
    assert result.returncode == 64
    assert message in result.stderr


def test_a_local_sources_one_shot_socket_is_not_transparent_so_it_needs_no_capability() -> None:
    with open_once_socket(("127.0.0.1", 0), socket.AF_INET) as sock:
        assert sock.getsockopt(socket.IPPROTO_IP, IP_TRANSPARENT) == 0


def test_a_batch_interrupted_by_a_signal_is_sent_again_whole_and_costs_nothing(sock: socket.socket) -> None:
    fake = FakeSendmmsg([-errno.EINTR, 2])
    batch = RawBatch(sock, fake, 8, checksum=False)
    flows = [flow_of(("203.0.113.7", 4242)), flow_of(("203.0.113.8", 4242))]
    kept = queued(batch, flows, [b"a", b"b"])
    failed: list[tuple[Flow, int]] = []
    asked: list[int] = []

    def pending(sock: socket.socket, error_number: int) -> bool:
        asked.append(error_number)
        return True

    batch.flush(failed, pending)

    assert (failed, len(kept), batch.count) == ([], 2, 0)
    assert [[message[1] for message in call] for call in fake.calls] == [[b"a", b"b"], [b"a", b"b"]]
    assert asked == []  # EINTR is no ICMP error: the error queue is not read for it


def raw_send_with(sock: socket.socket, fake: FakeSendmmsg, batch: int) -> RawSend:
    """A RawSend on `sock` whose sendmmsg is `fake` (the kernel's answers, recorded)."""
    sender = RawSend([sock], batch, checksum=False)
    sender.batches[socket.AF_INET]._sendmmsg = fake
    return sender


def test_a_full_batch_leaves_before_the_next_datagram_is_queued(sock: socket.socket) -> None:
    fake = FakeSendmmsg([])
    sender = raw_send_with(sock, fake, 2)
    flows = [flow_of(("203.0.113.7", n)) for n in (1, 2, 3)]
    buffers = [bytearray(b"one"), bytearray(b"two"), bytearray(b"six")]
    for flow, buffer in zip(flows, buffers, strict=True):
        sender.prepare(flow)
        base = ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))
        sender.queue(flow, base, len(buffer))

    assert [[message[1] for message in call] for call in fake.calls] == [[b"one", b"two"]]
    assert sender.flush() == []
    assert [[message[1] for message in call] for call in fake.calls] == [[b"one", b"two"], [b"six"]]


def test_without_an_engine_reading_error_queues_a_failed_datagram_is_reported_failed(
    sock: socket.socket,
) -> None:
    # Until an engine sets `pending`, no failure is taken for an earlier datagram's ICMP error.
    fake = FakeSendmmsg([-errno.ECONNREFUSED, 1])
    sender = raw_send_with(sock, fake, 8)
    flows = [flow_of(("203.0.113.7", 1)), flow_of(("203.0.113.8", 2))]
    buffers = [bytearray(b"a"), bytearray(b"b")]
    for flow, buffer in zip(flows, buffers, strict=True):
        sender.prepare(flow)
        sender.queue(flow, ctypes.addressof((ctypes.c_char * 1).from_buffer(buffer)), len(buffer))

    assert sender.flush() == [(flows[0], errno.ECONNREFUSED)]
    assert len(fake.calls) == 2


def test_an_immediate_send_failing_twice_is_tried_once_more_then_reported_with_its_errno() -> None:
    # A closed socket fails every send (EBADF) and sends nothing.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = RawSend([sock], 8, checksum=False)
    asked: list[int] = []

    def pending_once(sock: socket.socket, error_number: int) -> bool:  # as if the queue explained it
        asked.append(error_number)
        return True

    sender.pending = pending_once
    flow = flow_of(("203.0.113.7", 4242))
    sender.prepare(flow)
    sock.close()

    assert sender.send(flow, memoryview(b"x")) == errno.EBADF
    assert asked == [errno.EBADF]  # asked once: the second failure is the datagram's own
