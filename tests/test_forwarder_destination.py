"""Destination parsing: every accepted form, and one-line errors naming the bad value."""

import socket

import pytest

from forwarder.destination import DestinationSpec, parse_destination, parse_listen, resolve
from forwarder.errors import UnknownHostError, UsageError


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
    destination = resolve(parse_destination("192.0.2.2"), socket.AF_INET, 27015)
    assert destination.sockaddr == ("192.0.2.2", 27015)


def test_unresolvable_host_exits_with_no_host() -> None:
    with pytest.raises(UnknownHostError, match=r"'no-such-host\.invalid'") as caught:
        resolve(parse_destination("no-such-host.invalid:53"), socket.AF_INET, 53)
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
    destination = resolve(parse_destination("[2001:db8::2]:53"), socket.AF_INET, 27015)
    assert (destination.family, destination.sockaddr) == (socket.AF_INET6, ("2001:db8::2", 53))


def test_a_link_local_destination_is_refused_as_usage_naming_it() -> None:
    with pytest.raises(UsageError, match=r"'\[fe80::2\]:53' is an IPv6 link-local address") as caught:
        resolve(parse_destination("[fe80::2]:53"), socket.AF_INET6, 53)
    assert caught.value.exit_code == 64
