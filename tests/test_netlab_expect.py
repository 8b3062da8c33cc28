"""The expectation API: it passes on what arrived, and its failure report shows expected next to actual.

client 198.51.100.10 --- 198.51.100.1 host (no forwarder: the inbox listens on the host itself)
spoofed sources from 203.0.113.0/24 are sent with the fast (IP_TRANSPARENT) sender
"""

import pytest

from netlab import Lab
from netlab.errors import ExpectationError, NetlabError
from netlab.topology.shipped import dual_stack, seed_deployment
from netlab.traffic.expect import (
    ANY,
    Arrival,
    DatagramPattern,
    Inbox,
    SourcePattern,
    describe_payload,
    expect,
    payload_context,
)
from netlab.traffic.payload import make_payload

HOST = "198.51.100.1"


def send(lab: Lab, payload: bytes, src: str = "203.0.113.7", sport: int = 4242, count: int = 1) -> None:
    lab["client"].send_fast(src=src, sport=sport, dst=HOST, dport=27000, payloads=[payload], count=count)


@pytest.fixture
def inbox(lab: Lab) -> Inbox:
    lab.build(seed_deployment())
    return expect(lab["host"], port=27000)


@pytest.mark.parametrize(
    ("text", "address", "port", "matches"),
    [
        ("203.0.113.7:4242", "203.0.113.7", 4242, True),
        ("203.0.113.7:4242", "203.0.113.7", 4243, False),
        ("203.0.113.7", "203.0.113.7", 1, True),
        ("203.0.113.7:*", "203.0.113.8", 1, False),
        ("*:4242", "192.0.2.9", 4242, True),
        ("203.0.113.0/24", "203.0.113.200", 9, True),
        ("[2001:db8:113::7]:53", "2001:db8:113::7", 53, True),
        ("2001:db8:113::/64", "2001:db8:114::7", 53, False),
        (ANY, "192.0.2.1", 1, True),
    ],
)
def test_source_patterns_match_addresses_networks_and_wildcard_ports(
    text: str, address: str, port: int, matches: bool
) -> None:
    pattern = SourcePattern.parse(text)
    assert (pattern.address_matches(address) and pattern.port_matches(port)) is matches


def test_a_bad_source_pattern_is_refused_naming_it() -> None:
    with pytest.raises(NetlabError, match=r"bad source pattern '203\.0\.113\.7:port'"):
        SourcePattern.parse("203.0.113.7:port")


@pytest.mark.privileged
def test_a_datagram_that_arrived_satisfies_the_expectation_and_nothing_else(lab: Lab, inbox: Inbox) -> None:
    send(lab, b"hi")
    inbox.datagram(src="203.0.113.7:4242", payload=b"hi").arrives(within=2).and_nothing_else()


@pytest.mark.privileged
def test_left_out_fields_are_dont_care(lab: Lab, inbox: Inbox) -> None:
    send(lab, b"whatever", sport=5555)
    inbox.datagram(src="203.0.113.0/24").arrives(within=2)
    send(lab, b"12345")
    inbox.datagram(size=5).arrives(within=2)
    inbox.nothing_else()


@pytest.mark.privileged
def test_a_burst_is_counted_and_one_missing_datagram_fails_it(lab: Lab, inbox: Inbox) -> None:
    send(lab, b"burst", count=50)
    inbox.datagrams(count=50, src="203.0.113.7:4242", payload=b"burst").arrive(within=5)
    send(lab, b"burst", count=3)
    with pytest.raises(
        ExpectationError, match=r"expected 4 datagrams at host udp \[::\]:27000 within 0.3s; 3 matched"
    ):
        inbox.datagrams(count=4, payload=b"burst").arrive(within=0.3)


@pytest.mark.privileged
def test_the_failure_report_shows_the_expected_datagram_next_to_the_closest_arrival(
    lab: Lab, inbox: Inbox
) -> None:
    send(lab, b"hello", src="203.0.113.8")
    with pytest.raises(ExpectationError) as caught:
        inbox.datagram(src="203.0.113.7:4242", payload=b"hellO").arrives(within=0.5)
    report = str(caught.value)
    assert "expected a datagram at host udp [::]:27000 within 0.5s; 0 matched." in report
    assert "expected                          closest arrival (#1)" in report
    assert "source   203.0.113.7:4242                  203.0.113.8:4242  <- differs" in report
    assert "payload  b'hellO' (5 bytes)                b'hello' (5 bytes)  <- differs" in report
    assert "source address 203.0.113.8 is not in 203.0.113.7/32" in report
    assert "payload differs from byte 4 (0x6f instead of 0x4f)" in report
    assert f"captures of every interface: {lab.workdir / 'captures'}" in report


@pytest.mark.privileged
def test_the_failure_report_says_when_nothing_arrived(inbox: Inbox) -> None:
    with pytest.raises(ExpectationError) as caught:
        inbox.datagram(src="203.0.113.7:4242").arrives(within=0.1)
    assert "what arrived and was not accounted for (0):\n    (nothing)" in str(caught.value)


@pytest.mark.privileged
def test_nothing_else_fails_listing_the_extra_datagram(lab: Lab, inbox: Inbox) -> None:
    send(lab, b"one")
    send(lab, b"two")
    expectation = inbox.datagram(payload=b"one").arrives(within=2)
    with pytest.raises(
        ExpectationError, match=r"but 1 more datagram\(s\) arrived:\n    #1 .*\n         payload b'two'"
    ):
        expectation.and_nothing_else()


@pytest.mark.privileged
def test_never_arrives_fails_when_the_datagram_does_arrive(lab: Lab, inbox: Inbox) -> None:
    send(lab, b"oops")
    with pytest.raises(ExpectationError, match=r"(?s)expected no datagram from 203.0.113.7 .* <- matches"):
        inbox.datagram(src="203.0.113.7", payload=b"oops").never_arrives(within=2)


@pytest.mark.privileged
def test_ipv4_sources_on_a_dual_stack_inbox_are_shown_as_plain_ipv4(lab: Lab) -> None:
    lab.build(dual_stack())
    inbox = expect(lab["host"], port=27000)
    lab["client"].send_fast(src="203.0.113.7", sport=1, dst=HOST, dport=27000, payloads=[b"4"])
    lab["client"].send_fast(
        src="2001:db8:113::7", sport=2, dst="2001:db8:51::1", dport=27000, payloads=[b"6"]
    )
    inbox.datagram(src="203.0.113.7:1", payload=b"4").arrives(within=2)
    inbox.datagram(src="[2001:db8:113::7]:2", payload=b"6").arrives(within=2).and_nothing_else()


def test_a_long_payload_is_shown_as_its_size_and_first_bytes_in_hex() -> None:
    assert describe_payload(b"hello") == "b'hello' (5 bytes)"
    assert describe_payload(make_payload(3000)) == "3000 bytes: " + make_payload(8).hex(" ") + " ..."


def test_a_size_mismatch_names_both_sizes_and_shows_hex_around_the_first_difference() -> None:
    expected, actual = make_payload(3000), make_payload(3000)[:1472]
    [difference] = DatagramPattern(SourcePattern.parse(ANY), expected).differences(
        Arrival("203.0.113.7", 4242, actual, 0.0)
    )
    assert difference == "payload is 1472 bytes, not 3000 (the same bytes up to byte 1472)"
    assert payload_context(expected, actual) == [
        "first difference at byte 1472; bytes 1468.. in hex:",
        f"  expected  {expected[1468:1484].hex(' ')}",
        f"  arrived   {actual[1468:].hex(' ')} (ends at byte 1472)",
    ]


@pytest.mark.privileged
def test_a_datagram_a_failure_showed_is_not_reported_again_as_something_else(lab: Lab, inbox: Inbox) -> None:
    send(lab, make_payload(1000))
    with pytest.raises(ExpectationError) as caught:
        inbox.datagram(payload=make_payload(1200)).arrives(within=1)
    report = str(caught.value)
    assert "payload  1200 bytes: " in report
    assert "1000 bytes: " in report
    assert "payload is 1000 bytes, not 1200 (the same bytes up to byte 1000)" in report
    assert "first difference at byte 1000; bytes 996.. in hex:" in report
    inbox.nothing_else(0.2)
    send(lab, b"new")
    with pytest.raises(ExpectationError, match=r"1 more datagram\(s\) arrived:\n.*\n         payload b'new'"):
        inbox.nothing_else(1)
