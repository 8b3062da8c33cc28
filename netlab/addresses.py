"""The one home of ADDRESS:PORT: parsing it strictly ('198.51.100.1:53', '[2001:db8::1]:53') and writing it
back, the same way in the CLI, scenario files, the lab's activation and the programs inside nodes.
Standard library only, so the programs may import it."""

import ipaddress

from netlab.errors import AddressError

ENDPOINT_SYNTAX = "ADDRESS:PORT or [V6ADDRESS]:PORT"


def split_host_port(text: str) -> tuple[str, str]:
    """Split without judging: '[v6]:p' -> ('v6', 'p'), 'a:p' -> ('a', 'p'), anything else -> (text, '')."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest.removeprefix(":")
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, ""


def parse_port(text: str | int, what: str = "port") -> int:
    """A UDP port, 1 to 65535, from text or an int; AddressError naming the value otherwise."""
    if isinstance(text, bool) or not (isinstance(text, int) or (isinstance(text, str) and text.isdigit())):
        raise AddressError(f"{what} {text!r}: expected a number from 1 to 65535")
    if not 0 < int(text) < 65536:
        raise AddressError(f"{what} {text!r}: expected a number from 1 to 65535")
    return int(text)


def parse_endpoint(text: str) -> tuple[str, int]:
    """'198.51.100.1:27000' or '[2001:db8::1]:27000' -> (address, port): an address literal and a port of
    1 to 65535; an IPv6 address must be in brackets. AddressError names the text otherwise."""
    if not isinstance(text, str):
        raise AddressError(f"bad address {text!r}: expected {ENDPOINT_SYNTAX}")
    host, port = split_host_port(text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(f"bad address {text!r}: expected {ENDPOINT_SYNTAX}") from None
    if address.version == 6 and not text.startswith("["):
        raise AddressError(f"bad address {text!r}: write an IPv6 address in brackets, [{host}]:PORT")
    try:
        return str(address), parse_port(port)
    except AddressError:
        raise AddressError(f"bad port in {text!r}: expected {ENDPOINT_SYNTAX}, port 1 to 65535") from None


def format_endpoint(address: str, port: int | str) -> str:
    """(address, port) as people and parse_endpoint read it: '203.0.113.7:4242' or '[2001:db8::7]:4242'."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def ip_version(address: str) -> int:
    """4 or 6 for an address literal; AddressError naming it otherwise."""
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        raise AddressError(f"bad address {address!r}: expected an IPv4 or IPv6 address") from None
