"""netlab.addresses, the one parser of ADDRESS:PORT: what it accepts, what it refuses and how it says so."""

import pytest

from netlab.addresses import format_endpoint, parse_endpoint, parse_port, split_host_port
from netlab.errors import AddressError, NetlabError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.1:27000", ("198.51.100.1", 27000)),
        ("[2001:db8::1]:53", ("2001:db8::1", 53)),
        ("[2001:DB8:0::1]:65535", ("2001:db8::1", 65535)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_an_endpoint_parses_to_address_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("198.51.100.1", "198.51.100.1"),
        ("198.51.100.1:0", "198.51.100.1:0"),
        ("198.51.100.1:65536", "198.51.100.1:65536"),
        ("198.51.100.1:-1", "198.51.100.1:-1"),
        ("host.example:53", "host.example:53"),
        ("2001:db8::1:53", "write an IPv6 address in brackets"),
        ("[2001:db8::1]", "[2001:db8::1]"),
        ("", "''"),
    ],
)
def test_a_bad_endpoint_is_one_address_error_naming_it(text: str, named: str) -> None:
    with pytest.raises(AddressError, match="bad") as caught:
        parse_endpoint(text)
    assert named in str(caught.value)
    assert isinstance(caught.value, NetlabError)


@pytest.mark.parametrize("port", [0, 65536, -1, "abc", True])
def test_a_port_outside_1_to_65535_is_refused_naming_it(port: object) -> None:
    with pytest.raises(AddressError, match=f"port {port!r}: expected a number from 1 to 65535"):
        parse_port(port)  # type: ignore[arg-type]


@pytest.mark.parametrize(("address", "port"), [("203.0.113.7", 4242), ("2001:db8::7", 4242)])
def test_formatting_and_parsing_round_trip(address: str, port: int) -> None:
    assert parse_endpoint(format_endpoint(address, port)) == (address, port)


def test_splitting_keeps_wildcards_for_patterns() -> None:
    assert split_host_port("*:4242") == ("*", "4242")
    assert split_host_port("[2001:db8::7]:*") == ("2001:db8::7", "*")
    assert split_host_port("2001:db8::/64") == ("2001:db8::/64", "")
