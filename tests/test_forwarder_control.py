"""The pktinfo of a received datagram, found by level and type in its control messages (however many others
a handed-over socket adds, e.g. systemd's Timestamping=), never read from a chain the kernel cut short.

The parsers are checked against a model on random chains (hypothesis) and on what this kernel really writes
for a loopback socket with SO_TIMESTAMP or SO_TIMESTAMPNS set before IP_PKTINFO.
"""

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.io.batch import BatchReceiver
from forwarder.io.control import (
    CONTROL_SPACE,
    MSG_CTRUNC,
    PKTINFO_ADDRESS,
    PKTINFO_KIND,
    UNKNOWN_LOCAL,
    origdst_first,
    origdst_in_control,
    origdst_local,
    pktinfo_in_control,
    pktinfo_local,
)
from forwarder.io.linux import IP_PKTINFO

SO_TIMESTAMP = 29  # SO_TIMESTAMP_OLD: a struct timeval (not exported by the socket module)
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD: a struct timespec
_HEADER = struct.Struct("@Nii")
_ALIGN = struct.calcsize("@N")

Message = tuple[int, int, bytes]

levels = st.sampled_from([socket.SOL_SOCKET, socket.IPPROTO_IP, socket.IPPROTO_IPV6, 0])
kinds = st.sampled_from([IP_PKTINFO, socket.IPV6_PKTINFO, SO_TIMESTAMP, SO_TIMESTAMPNS, 1, 2])
messages = st.lists(st.tuples(levels, kinds, st.binary(max_size=48)), max_size=6)
families = st.sampled_from([socket.AF_INET, socket.AF_INET6])


def encode(chain: list[Message]) -> bytes:
    """The control buffer the kernel would write for `chain`: each cmsghdr and its data, CMSG_ALIGN'ed."""
    out = b""
    for level, kind, data in chain:
        message = _HEADER.pack(_HEADER.size + len(data), level, kind) + data
        out += message + bytes(-len(message) % _ALIGN)
    return out


def pktinfo(family: socket.AddressFamily, address: bytes) -> Message:
    level, kind = PKTINFO_KIND[family]
    if family == socket.AF_INET:  # in_pktinfo: ifindex, ipi_spec_dst, ipi_addr
        return (level, kind, (3).to_bytes(4, "little") + address + bytes([192, 0, 2, 99]))
    return (level, kind, address + (3).to_bytes(4, "little"))  # in6_pktinfo: address, ifindex


def model(chain: list[Message], family: socket.AddressFamily) -> bytes | None:
    """The first message of the listener family's pktinfo kind long enough to hold the address."""
    offset, length = PKTINFO_ADDRESS[family]
    for level, kind, data in chain:
        if (level, kind) == PKTINFO_KIND[family] and len(data) >= offset + length:
            return data[offset : offset + length]
    return None


@given(
    before=messages,
    after=messages,
    family=families,
    address=st.binary(min_size=16, max_size=16),
    present=st.booleans(),
)
def test_the_pktinfo_is_found_by_level_and_type_wherever_it_is_in_the_chain(
    before: list[Message], after: list[Message], family: socket.AddressFamily, address: bytes, present: bool
) -> None:
    address = address[: PKTINFO_ADDRESS[family][1]]
    chain = [*before, pktinfo(family, address), *after] if present else [*before, *after]

    expected = model(chain, family)
    assert pktinfo_in_control(encode(chain), family) == expected
    assert pktinfo_local(chain, family) == expected
    if present and model(before, family) is None:
        assert expected == address


@given(chain=messages, family=families, cut=st.integers(0, 400))
def test_nothing_is_trusted_from_a_chain_the_kernel_cut_short(
    chain: list[Message], family: socket.AddressFamily, cut: int
) -> None:
    data = encode([*chain, pktinfo(family, bytes(16)[: PKTINFO_ADDRESS[family][1]])])

    assert pktinfo_in_control(data[:cut], family, MSG_CTRUNC) is UNKNOWN_LOCAL
    assert pktinfo_local(chain, family, MSG_CTRUNC) is UNKNOWN_LOCAL


@given(chain=messages, family=families, cut=st.integers(0, 400), junk=st.binary(max_size=40))
def test_a_malformed_chain_gives_only_a_pktinfo_that_lies_whole_before_the_damage(
    chain: list[Message], family: socket.AddressFamily, cut: int, junk: bytes
) -> None:
    data = encode(chain)[:cut] + junk

    found = pktinfo_in_control(data, family)

    # The junk may itself spell a whole pktinfo message where the walk lands (zeros make IPPROTO_IP): then
    # the address comes from the junk, never from bytes straddling the damage.
    assert found is None or found == model(chain, family) or found in junk


def test_an_ipv6_listener_takes_its_own_familys_pktinfo_when_both_are_there() -> None:
    mapped = bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 2])
    chain = [pktinfo(socket.AF_INET, bytes([198, 51, 100, 2])), pktinfo(socket.AF_INET6, mapped)]

    assert pktinfo_in_control(encode(chain), socket.AF_INET6) == mapped


@pytest.mark.parametrize("stamp", [SO_TIMESTAMP, SO_TIMESTAMPNS], ids=["SO_TIMESTAMP", "SO_TIMESTAMPNS"])
def test_a_timestamped_loopback_datagram_tells_its_local_address_on_both_receive_paths(stamp: int) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        listener.setsockopt(socket.SOL_SOCKET, stamp, 1)  # before IP_PKTINFO, as systemd hands it over
        listener.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        for _ in range(2):
            client.sendto(b"x", listener.getsockname())

        _, ancillary, flags, _ = listener.recvmsg(16, CONTROL_SPACE)
        assert len(ancillary) == 2  # the timestamp comes first: a fixed offset would read it
        assert pktinfo_local(ancillary, socket.AF_INET, flags) == bytes([127, 0, 0, 1])

        receiver = BatchReceiver.create(4, 64, CONTROL_SPACE)
        assert receiver is not None
        listener.setblocking(False)
        assert receiver.receive(listener.fileno()) == 1
        length = receiver.u32[receiver.control_lengths[0]]
        control = receiver.control_view[receiver.controls[0] : receiver.controls[0] + length]
        flags = receiver.u32[receiver.slots[0].flags]
        assert pktinfo_in_control(control, socket.AF_INET, flags) == bytes([127, 0, 0, 1])


def test_a_control_buffer_too_small_for_the_chain_is_reported_not_read() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        listener.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        client.sendto(b"x", listener.getsockname())

        _, ancillary, flags, _ = listener.recvmsg(16, socket.CMSG_SPACE(20))  # room for the pktinfo alone

        assert flags & MSG_CTRUNC
        assert pktinfo_local(ancillary, socket.AF_INET, flags) is UNKNOWN_LOCAL


def _cmsg(level: int, kind: int, data: bytes) -> bytes:
    return struct.pack("@Nii", socket.CMSG_LEN(len(data)), level, kind) + data.ljust(
        socket.CMSG_SPACE(len(data)) - socket.CMSG_LEN(0), b"\0"
    )


SOCKADDR_IN = (
    struct.pack("=H", socket.AF_INET) + struct.pack("!H", 27042) + socket.inet_aton("198.51.100.1") + bytes(8)
)
SOCKADDR_IN6 = (
    struct.pack("=H", socket.AF_INET6)
    + struct.pack("!HI", 27042, 0)
    + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    + bytes(4)
)


@pytest.mark.parametrize(
    ("level", "kind", "sockaddr"),
    [(socket.IPPROTO_IP, 20, SOCKADDR_IN), (socket.IPPROTO_IPV6, 74, SOCKADDR_IN6)],
)
def test_the_original_destination_is_found_among_other_control_messages(
    level: int, kind: int, sockaddr: bytes
) -> None:
    timestamp = (socket.SOL_SOCKET, 29, bytes(16))
    assert origdst_local([timestamp, (level, kind, sockaddr)]) == sockaddr
    chain = _cmsg(*timestamp) + _cmsg(level, kind, sockaddr)
    assert origdst_in_control(chain) == sockaddr


def test_no_original_destination_is_none_and_a_cut_chain_is_unknown() -> None:
    pktinfo = (socket.IPPROTO_IP, IP_PKTINFO, bytes(12))
    assert origdst_local([pktinfo]) is None
    assert origdst_in_control(_cmsg(*pktinfo)) is None
    assert origdst_local([(socket.IPPROTO_IP, 20, SOCKADDR_IN)], socket.MSG_CTRUNC) == UNKNOWN_LOCAL
    assert origdst_in_control(_cmsg(socket.IPPROTO_IP, 20, SOCKADDR_IN), socket.MSG_CTRUNC) == UNKNOWN_LOCAL


def test_a_short_original_destination_message_is_not_trusted() -> None:
    assert origdst_local([(socket.IPPROTO_IP, 20, SOCKADDR_IN[:8])]) is None
    assert origdst_in_control(_cmsg(socket.IPPROTO_IP, 20, SOCKADDR_IN[:8])) is None


@given(st.binary(max_size=200))
def test_any_control_buffer_yields_a_sockaddr_or_nothing(chain: bytes) -> None:
    found = origdst_in_control(chain)
    assert found is None or len(found) in (16, 28)


@pytest.mark.parametrize(
    ("level", "kind", "sockaddr"),
    [(socket.IPPROTO_IP, 20, SOCKADDR_IN), (socket.IPPROTO_IPV6, 74, SOCKADDR_IN6)],
)
def test_an_original_destination_first_in_its_control_messages_is_read_at_its_fixed_place(
    level: int, kind: int, sockaddr: bytes
) -> None:
    # The reply socket's only message: read without a walk; anything before it leaves it to the walk.
    assert origdst_first(_cmsg(level, kind, sockaddr)) == sockaddr
    assert origdst_first(_cmsg(level, kind, sockaddr) + _cmsg(socket.SOL_SOCKET, 29, bytes(16))) == sockaddr
    assert origdst_first(_cmsg(socket.SOL_SOCKET, 29, bytes(16)) + _cmsg(level, kind, sockaddr)) is None
    cut = _cmsg(level, kind, sockaddr)[: socket.CMSG_LEN(len(sockaddr)) - 1]
    assert origdst_first(cut) is None  # not all of it is there


def test_an_original_destination_message_of_another_length_is_not_read_at_the_fixed_place() -> None:
    assert origdst_first(_cmsg(socket.IPPROTO_IP, 20, SOCKADDR_IN[:8])) is None
    assert origdst_first(_cmsg(socket.IPPROTO_IP, 20, SOCKADDR_IN6)) is None  # an IPv6 size, IPv4 kind
    assert origdst_first(_cmsg(socket.IPPROTO_IPV6, 74, SOCKADDR_IN)) is None
    assert origdst_first(b"") is None


origdst_messages = st.sampled_from(
    [(socket.IPPROTO_IP, 20, SOCKADDR_IN), (socket.IPPROTO_IPV6, 74, SOCKADDR_IN6)]
)


@given(st.lists(st.one_of(st.tuples(levels, kinds, st.binary(max_size=48)), origdst_messages), max_size=4))
def test_the_fixed_place_read_agrees_with_the_walk_whenever_it_answers(chain: list[Message]) -> None:
    buffer = encode(chain)
    first = origdst_first(buffer)
    assert first is None or first == origdst_in_control(buffer)
    if chain and chain[0] in ((socket.IPPROTO_IP, 20, SOCKADDR_IN), (socket.IPPROTO_IPV6, 74, SOCKADDR_IN6)):
        assert first == chain[0][2]
