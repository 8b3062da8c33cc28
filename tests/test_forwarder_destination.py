"""Destination parsing: every accepted form, and one-line errors naming the bad value."""

import logging
import socket
from collections.abc import Iterator

import pytest

from forwarder.core.destination import Destination, DestinationSpec, parse_destination, parse_listen
from forwarder.errors import UnknownHostError, UsageError
from forwarder.io.listeners import ListeningSocket
from forwarder.service.cli import build_routes
from forwarder.service.resolution import lookup, pick


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.2", DestinationSpec("192.0.2.2", "192.0.2.2", None)),
        ("192.0.2.2:27000", DestinationSpec("192.0.2.2:27000", "192.0.2.2", 27000)),
        ("backend.example:53", DestinationSpec("backend.example:53", "backend.example", 53)),
        ("[2001:db8::2]", DestinationSpec("[2001:db8::2]", "2001:db8::2", None)),
        ("[2001:db8::2]:53", DestinationSpec("[2001:db8::2]:53", "2001:db8::2", 53)),
        ("2001:db8::2", DestinationSpec("2001:db8::2", "2001:db8::2", None)),
        ("dns=192.0.2.2:53", DestinationSpec("dns=192.0.2.2:53", "192.0.2.2", 53, "dns")),
    ],
)
def test_accepted_destination_forms(text: str, expected: DestinationSpec) -> None:
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("192.0.2.2:0", "bad port '0'"),
        ("192.0.2.2:65536", "bad port '65536'"),
        ("192.0.2.2:-1", "bad port '-1'"),
        ("192.0.2.2:abc", "bad port 'abc'"),
        ("", "empty destination ''"),
        ("2001:db8::1:53", "ambiguous IPv6 destination '2001:db8::1:53'"),
        ("[2001:db8::1]53", "unexpected '53'"),
        ("=192.0.2.2", "empty socket name"),
    ],
)
def test_bad_destinations_are_usage_errors_naming_the_value(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_destination(text)
    assert fragment in str(caught.value)
    assert caught.value.exit_code == 64


def test_no_port_means_the_listening_sockets_port() -> None:
    destination = pick(lookup(parse_destination("192.0.2.2"), 27015), socket.AF_INET)
    assert destination.sockaddr == ("192.0.2.2", 27015)


def test_unresolvable_host_exits_with_no_host() -> None:
    with pytest.raises(UnknownHostError, match=r"'no-such-host\.invalid'") as caught:
        pick(lookup(parse_destination("no-such-host.invalid:53"), 53), socket.AF_INET)
    assert caught.value.exit_code == 68


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:53", ("0.0.0.0", 53)),
        ("[::]:53", ("::", 53)),
        ("[2001:db8::1]:27000", ("2001:db8::1", 27000)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0.0.0.0", "has no port"),
        ("[::]", "has no port"),
        ("localhost:53", "is not a numeric IP address"),
        ("0.0.0.0:0", "bad port '0'"),
        ("a=0.0.0.0:53", "bad --listen address"),
    ],
)
def test_bad_listen_addresses_are_usage_errors(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_listen(text)


def test_a_literal_resolves_in_its_own_family_whatever_the_socket_prefers() -> None:
    destination = pick(lookup(parse_destination("[2001:db8::2]:53"), 27015), socket.AF_INET)
    assert (destination.family, destination.sockaddr) == (socket.AF_INET6, ("2001:db8::2", 53))


def test_a_link_local_destination_is_refused_as_usage_naming_it() -> None:
    with pytest.raises(UsageError, match=r"'\[fe80::2\]:53' is an IPv6 link-local address") as caught:
        pick(lookup(parse_destination("[fe80::2]:53"), 53), socket.AF_INET6)
    assert caught.value.exit_code == 64


def test_a_socket_name_may_contain_equals_signs_the_destination_never_does() -> None:
    spec = parse_destination("dns=v4=192.0.2.2:53")
    assert (spec.fd_name, spec.host, spec.port) == ("dns=v4", "192.0.2.2", 53)


def test_a_v4_mapped_literal_resolves_to_the_plain_ipv4_destination() -> None:
    found = lookup(parse_destination("[::ffff:192.0.2.2]:5353"), 27015)
    assert found == {socket.AF_INET: Destination(socket.AF_INET, "192.0.2.2", 5353)}


def both_families(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every name resolve to 2001:db8::2 and 192.0.2.2, in that order (as a resolver preferring IPv6)."""

    def getaddrinfo(host: str, port: int, *_: object) -> list[tuple[object, ...]]:
        return [
            (socket.AF_INET6, socket.SOCK_DGRAM, 17, "", ("2001:db8::2", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.2", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def dual_stack() -> Iterator[ListeningSocket]:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        yield ListeningSocket(sock, "dual")


def test_a_name_of_both_families_on_a_dual_stack_socket_warns_which_clients_are_dropped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, dual_stack: ListeningSocket
) -> None:
    both_families(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="forwarder"):
        routes = build_routes([dual_stack], [parse_destination("backend.example:53")], None, lambda _: False)
    assert routes[0].destination == Destination(socket.AF_INET6, "2001:db8::2", 53)
    [warning] = caplog.messages
    assert "destination 'backend.example:53' has IPv4 and IPv6 addresses and socket 'dual'" in warning
    assert "using [2001:db8::2]:53" in warning
    assert "going to 192.0.2.2:53" in warning
    assert "--prefer-family ipv4|ipv6" in warning


@pytest.mark.parametrize(
    ("prefer", "expected"), [(socket.AF_INET, "192.0.2.2"), (socket.AF_INET6, "2001:db8::2")]
)
def test_prefer_family_picks_the_family_of_a_name_on_a_dual_stack_socket_without_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    dual_stack: ListeningSocket,
    prefer: socket.AddressFamily,
    expected: str,
) -> None:
    both_families(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="forwarder"):
        routes = build_routes(
            [dual_stack], [parse_destination("backend.example:53")], prefer, lambda _: False
        )
    assert routes[0].destination == Destination(prefer, expected, 53)
    assert caplog.messages == []


def test_prefer_family_never_picks_a_family_the_socket_cannot_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    both_families(monkeypatch)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        listener = ListeningSocket(sock, "v4")
        routes = build_routes(
            [listener], [parse_destination("backend.example:53")], socket.AF_INET6, lambda _: False
        )
    assert routes[0].destination == Destination(socket.AF_INET, "192.0.2.2", 53)
