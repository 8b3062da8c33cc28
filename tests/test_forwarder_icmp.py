"""Entries of a flow socket's error queue, decoded and named without sockets: the kernel's struct
sock_extended_err and the offender address behind it, ICMP and ICMPv6 in one vocabulary, a fixed set of
names whatever arrives; and, in the lab, the README's recipe keeping spoofed ICMPv6 errors out."""

import errno
import re
import socket
import struct

import pytest

from forwarder.core.icmp import (
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SO_EE_ORIGIN_LOCAL,
    QueuedError,
    failed_by_pending_error,
)
from forwarder.io.linux import IP_RECVERR, IPV6_RECVERR, parse_queued_error
from netlab import Lab, load_topology, start_forwarder
from netlab.lab import netns
from netlab.service.relay import route_backend_errors


def extended_error(
    error_number: int, origin: int, icmp_type: int, code: int, offender: tuple[int, str] | None = None
) -> bytes:
    """A struct sock_extended_err (and offender sockaddr) as the kernel writes it: the inverse of
    parse_queued_error."""
    data = struct.pack("=IBBBBII", error_number, origin, icmp_type, code, 0, 0, 0)
    if offender is not None:
        family, address = offender
        packed = socket.inet_pton(family, address)
        if family == socket.AF_INET:
            data += socket.AF_INET.to_bytes(2, "little") + bytes(2) + packed + bytes(8)
        else:
            data += socket.AF_INET6.to_bytes(2, "little") + bytes(6) + packed + bytes(4)
    return data


def test_a_port_unreachable_from_the_backend_is_backend_unreachable_with_its_offender() -> None:
    data = extended_error(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, 3, 3, (socket.AF_INET, "192.0.2.2"))
    error = parse_queued_error([(socket.IPPROTO_IP, IP_RECVERR, data)])
    assert error == QueuedError(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, 3, 3, "192.0.2.2")
    assert error.name == "backend-unreachable"


def test_an_icmpv6_port_unreachable_is_backend_unreachable_too() -> None:
    data = extended_error(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP6, 1, 4, (socket.AF_INET6, "2001:db8:2::2"))
    error = parse_queued_error([(socket.IPPROTO_IPV6, IPV6_RECVERR, data)])
    assert error is not None
    assert (error.name, error.offender) == ("backend-unreachable", "2001:db8:2::2")


@pytest.mark.parametrize(
    ("origin", "icmp_type", "code", "name"),
    [
        (SO_EE_ORIGIN_ICMP, 3, 0, "net-unreachable"),
        (SO_EE_ORIGIN_ICMP, 3, 1, "host-unreachable"),
        (SO_EE_ORIGIN_ICMP, 3, 4, "packet-too-big"),
        (SO_EE_ORIGIN_ICMP, 3, 13, "admin-prohibited"),
        (SO_EE_ORIGIN_ICMP, 11, 0, "time-exceeded"),
        (SO_EE_ORIGIN_ICMP, 3, 7, "icmp-other"),
        (SO_EE_ORIGIN_ICMP6, 1, 3, "host-unreachable"),
        (SO_EE_ORIGIN_ICMP6, 1, 1, "admin-prohibited"),
        (SO_EE_ORIGIN_ICMP6, 2, 0, "packet-too-big"),
        (SO_EE_ORIGIN_ICMP6, 1, 2, "icmp6-other"),
    ],
)
def test_icmp_errors_are_named_by_type_and_code_and_the_rest_is_other(
    origin: int, icmp_type: int, code: int, name: str
) -> None:
    assert QueuedError(errno.EHOSTUNREACH, origin, icmp_type, code, None).name == name


def test_an_error_of_local_origin_is_named_by_its_errno() -> None:
    assert QueuedError(errno.EMSGSIZE, SO_EE_ORIGIN_LOCAL, 0, 0, None).name == "local-EMSGSIZE"


def test_ancillary_data_without_an_extended_error_gives_none() -> None:
    assert parse_queued_error([]) is None
    assert parse_queued_error([(socket.IPPROTO_IP, 8, bytes(12))]) is None  # IP_PKTINFO, not an error
    assert parse_queued_error([(socket.IPPROTO_IP, IP_RECVERR, bytes(4))]) is None  # cut short


def test_an_error_without_an_offender_address_parses() -> None:
    error = parse_queued_error([(socket.IPPROTO_IP, IP_RECVERR, extended_error(0, SO_EE_ORIGIN_ICMP, 3, 3))])
    assert error is not None
    assert error.offender is None


PROTOCOL_UNREACHABLE = QueuedError(errno.ENOPROTOOPT, SO_EE_ORIGIN_ICMP, 3, 2, "192.0.2.2")
ADMIN_PROHIBITED = QueuedError(errno.EACCES, SO_EE_ORIGIN_ICMP6, 1, 1, "2001:db8:2::2")


@pytest.mark.parametrize(
    ("error_number", "queued"),
    [
        (errno.ENOPROTOOPT, [PROTOCOL_UNREACHABLE]),
        (errno.EACCES, [ADMIN_PROHIBITED]),
        # Two errors queued: the socket holds the later one pending, and the send fails with it.
        (errno.EACCES, [None, PROTOCOL_UNREACHABLE, ADMIN_PROHIBITED]),
    ],
)
def test_a_send_failed_with_the_errno_of_a_queued_icmp_error_was_failed_by_it(
    error_number: int, queued: list[QueuedError | None]
) -> None:
    assert failed_by_pending_error(error_number, queued)


@pytest.mark.parametrize(
    ("error_number", "queued"),
    [
        (errno.ENOPROTOOPT, []),  # nothing was pending: the datagram's own failure
        (errno.EPERM, [PROTOCOL_UNREACHABLE]),  # a firewall on the host, whatever else is queued
        (errno.EHOSTUNREACH, [QueuedError(errno.EHOSTUNREACH, SO_EE_ORIGIN_LOCAL, 0, 0, None)]),
        (errno.ENOPROTOOPT, [None]),
    ],
)
def test_a_send_failed_otherwise_is_the_datagrams_own_failure(
    error_number: int, queued: list[QueuedError | None]
) -> None:
    assert not failed_by_pending_error(error_number, queued)


@pytest.mark.parametrize(
    ("origin", "other"), [(SO_EE_ORIGIN_ICMP, "icmp-other"), (SO_EE_ORIGIN_ICMP6, "icmp6-other")]
)
def test_every_type_and_code_a_spoofer_can_send_falls_into_a_fixed_set_of_names(
    origin: int, other: str
) -> None:
    # 256 spoofed ICMPv6 codes made 254 names: 254 warning lines and 254 permanent metrics series.
    names = {
        QueuedError(0, origin, icmp_type, code, None).name for icmp_type in range(256) for code in range(256)
    }
    assert other in names
    assert len(names) <= 10
    assert not any(name[-1].isdigit() for name in names)


def test_a_local_error_of_an_unknown_errno_is_local_other() -> None:
    assert QueuedError(4000, SO_EE_ORIGIN_LOCAL, 0, 0, None).name == "local-other"


# --- in the lab: the README's ICMP recipe keeps spoofed errors out ---------------------------------------
#
#   client 2001:db8:51::10 --- [host: forwarder] --- 2001:db8:2::2 backend (dual-stack.toml; nothing
#   listens on the backend's 5353, so each datagram gets a port unreachable). The clients are spoofed
#   sources 2001:db8:113::/64 the host routes via the client node, where a spoofer also sits.

BACKEND = "2001:db8:2::2"
IPV6_TRANSPARENT = 75


def spoofed_icmp6_errors(client: tuple[str, int], codes: range) -> list[bytes]:
    """ICMPv6 destination-unreachable messages of every code in `codes` about a datagram `client` sent to
    the backend's 5353 (the kernel computes the ICMPv6 checksum)."""
    udp = struct.pack("!HHHH", client[1], 5353, 8, 0)
    inner = struct.pack("!IHBB", 6 << 28, len(udp), socket.IPPROTO_UDP, 64)
    inner += socket.inet_pton(socket.AF_INET6, client[0]) + socket.inet_pton(socket.AF_INET6, BACKEND) + udp
    return [struct.pack("!BBHI", 1, code, 0, 0) + inner for code in codes]


def send_as_the_backend(lab: Lab, node: str, messages: list[bytes], to: str) -> None:
    """Send ICMPv6 `messages` from `node` with the backend's address as their source (a spoofer)."""
    with netns.socket_in(
        lab[node].namespace, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6
    ) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        sock.bind((BACKEND, 0))
        for message in messages:
            sock.sendto(message, (to, 0))


def icmp_errors_since_start(value: str) -> int:
    match = re.search(r"since start .*?(\d+) ICMP errors", value)
    return int(match.group(1)) if match else 0


@pytest.mark.privileged
@pytest.mark.parametrize(("interface", "spoofed_counted"), [("to-backend", 0), (None, 249)])
def test_the_recipes_interface_match_keeps_spoofed_icmpv6_errors_out(
    lab: Lab, interface: str | None, spoofed_counted: int
) -> None:
    # 256 spoofed ICMPv6 codes were counted: IPv6 has no rp_filter, and the recipe matched the source only.
    lab.build(load_topology("dual-stack"))
    route_backend_errors(lab["host"], [BACKEND], interface=interface)
    forwarder = start_forwarder(
        lab["host"], ["[2001:db8:51::1]:53"], [f"[{BACKEND}]:5353"], args=["--stats-interval", "0.2"]
    )
    first, second = ("2001:db8:113::7", 4000), ("2001:db8:113::8", 4000)
    lab["client"].send_fast(src=first[0], sport=first[1], dst="2001:db8:51::1", dport=53)
    forwarder.wait_ready()
    forwarder.wait_status(lambda value: icmp_errors_since_start(value) == 1)  # the backend's own error

    send_as_the_backend(lab, "client", spoofed_icmp6_errors(first, range(7, 256)), first[0])
    # The next real error comes after the spoofed ones (veth delivers inline): once it is counted, every
    # spoofed one that was going to be counted is.
    lab["client"].send_fast(src=second[0], sport=second[1], dst="2001:db8:51::1", dport=53)
    status = forwarder.wait_status(lambda value: icmp_errors_since_start(value) >= 2)

    assert icmp_errors_since_start(status.value) == 2 + spoofed_counted
    assert forwarder.stop() == 0
    if spoofed_counted:  # one name, one log line per interval for all of them
        assert "icmp6-other" in forwarder.process.output()
