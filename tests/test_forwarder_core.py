"""The forwarder's decisions, without sockets."""

import socket

from forwarder.core import Counters, DropReason, presentable_source


def test_ipv4_client_is_presented_as_itself() -> None:
    assert presentable_source(("203.0.113.7", 4242), socket.AF_INET) == ("203.0.113.7", 4242)


def test_v4_mapped_client_is_presented_as_plain_ipv4_to_an_ipv4_backend() -> None:
    assert presentable_source(("::ffff:203.0.113.7", 4242, 0, 0), socket.AF_INET) == ("203.0.113.7", 4242)


def test_ipv6_client_cannot_be_presented_to_an_ipv4_backend() -> None:
    assert presentable_source(("2001:db8::7", 4242, 0, 0), socket.AF_INET) is DropReason.FAMILY_MISMATCH


def test_ipv4_client_cannot_be_presented_to_an_ipv6_backend() -> None:
    assert presentable_source(("203.0.113.7", 4242), socket.AF_INET6) is DropReason.FAMILY_MISMATCH


def test_loopback_client_is_dropped_because_the_kernel_refuses_that_source() -> None:
    assert presentable_source(("127.0.0.1", 4242), socket.AF_INET) is DropReason.LOOPBACK_SOURCE
    assert presentable_source(("::1", 4242, 0, 0), socket.AF_INET6) is DropReason.LOOPBACK_SOURCE


def test_status_line_counts_forwarded_and_drops_by_reason() -> None:
    counters = Counters()
    counters.forwarded = 5
    counters.drop(DropReason.TRUNCATED)
    counters.drop(DropReason.SEND_ERROR, "ECONNREFUSED")
    assert counters.summary(10, flows=3) == (
        "5 datagrams forwarded in the last 10 seconds, 2 dropped (send-error:ECONNREFUSED 1, truncated 1);"
        " since start 5 forwarded, 2 dropped; 3 flows."
    )
