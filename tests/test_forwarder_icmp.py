"""Entries of a flow socket's error queue, decoded and named without sockets: the kernel's struct
sock_extended_err and the offender address behind it, ICMP and ICMPv6 in one vocabulary."""

import errno
import socket

import pytest

from forwarder.icmp import (
    IP_RECVERR,
    IPV6_RECVERR,
    SO_EE_ORIGIN_ICMP,
    SO_EE_ORIGIN_ICMP6,
    SO_EE_ORIGIN_LOCAL,
    QueuedError,
    extended_error,
    failed_by_pending_error,
    parse_queued_error,
)


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
        (SO_EE_ORIGIN_ICMP, 3, 7, "icmp-3-7"),
        (SO_EE_ORIGIN_ICMP6, 1, 3, "host-unreachable"),
        (SO_EE_ORIGIN_ICMP6, 1, 1, "admin-prohibited"),
        (SO_EE_ORIGIN_ICMP6, 2, 0, "packet-too-big"),
        (SO_EE_ORIGIN_ICMP6, 1, 2, "icmp6-1-2"),
    ],
)
def test_other_icmp_errors_are_named_by_type_and_code(
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
