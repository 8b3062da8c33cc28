"""Port ranges on one socket, without sockets: the destination syntax (`[NAME=]FIRST-LAST@HOST[:PORT|
:BFIRST-BLAST]`) and each malformed form refused with 64 naming it, the core rule mapping an original
destination's port to the backend's (forwarder.core.ranges), the machine's drops and the counts STATUS=
and the metrics file show: one entry per range, never one per port."""

import errno
import logging
import pathlib
import socket
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forwarder.core.actions import OpenFlow
from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.counters import Counters
from forwarder.core.destination import Destination, DestinationSpec, PortRange, parse_destination
from forwarder.core.flows import Flow, Path
from forwarder.core.machine import ForwardingMachine
from forwarder.core.ranges import Backends, PortMap, RangeCounts, reply_source
from forwarder.core.settings import Settings
from forwarder.errors import UsageError
from forwarder.service.metrics import exposition
from forwarder.service.ranges import refuse_unserved, warn_of_mark_routing
from netlab.lab.process import python_env

BACKEND = Destination(socket.AF_INET, "192.0.2.2", 27000)


def _spec(
    text: str,
    ports: tuple[int, int],
    host: str,
    port: int | None = None,
    *,
    backend: tuple[int, int] | None = None,
    name: str | None = None,
) -> DestinationSpec:
    backend_ports = None if backend is None else PortRange(*backend)
    return DestinationSpec(text, host, port, name, PortRange(*ports), backend_ports)


@pytest.mark.parametrize(
    "expected",
    [
        _spec("27000-27050@192.0.2.2", (27000, 27050), "192.0.2.2"),
        _spec("10000-20000@192.0.2.2:30000-40000", (10000, 20000), "192.0.2.2", backend=(30000, 40000)),
        _spec("10000-20000@192.0.2.2:5000", (10000, 20000), "192.0.2.2", 5000),
        _spec("m=1-2@[2001:db8::2]:30000-30001", (1, 2), "2001:db8::2", backend=(30000, 30001), name="m"),
        _spec("10000-20000@[2001:db8::2]", (10000, 20000), "2001:db8::2"),
        _spec("10000-20000@2001:db8::2", (10000, 20000), "2001:db8::2"),
        _spec("27000-27000@backend.example:53", (27000, 27000), "backend.example", 53),
        _spec("a=b=1-65535@backend.example", (1, 65535), "backend.example", name="a=b"),
    ],
    ids=lambda spec: spec.text,
)
def test_accepted_port_range_forms(expected: DestinationSpec) -> None:
    assert parse_destination(expected.text) == expected


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("27050-27000@192.0.2.2", "bad port range '27050-27000' in '27050-27000@192.0.2.2': its first"),
        ("0-10@192.0.2.2", "bad port '0' in port range '0-10'"),
        ("27000-65536@192.0.2.2", "bad port '65536' in port range '27000-65536'"),
        ("1-20@192.0.2.2:30-40", "port ranges of different lengths in '1-20@192.0.2.2:30-40'"),
        ("10-20@192.0.2.2:30-20", "bad port range '30-20'"),
        ("@192.0.2.2", "no port range before '@' in '@192.0.2.2'"),
        ("media=@192.0.2.2", "no port range before '@' in 'media=@192.0.2.2'"),
        ("27000-@192.0.2.2", "bad port range '27000-' in '27000-@192.0.2.2': expected FIRST-LAST with both"),
        ("-27000@192.0.2.2", "bad port range '-27000'"),
        ("27000-27050@", "no host after '@' in '27000-27050@'"),
        ("27000-27050@:5000", "empty host in '27000-27050@:5000'"),
        ("27000@192.0.2.2", "'27000' before '@' in '27000@192.0.2.2' is no port range"),
        ("27000-27050@192.0.2.2@192.0.2.3", "two '@' in '27000-27050@192.0.2.2@192.0.2.3'"),
        ("192.0.2.2:30000-40000", "backend port range 30000-40000 in '192.0.2.2:30000-40000' without"),
        ("[2001:db8::2]:30000-40000", "backend port range 30000-40000 in '[2001:db8::2]:30000-40000' w"),
        ("27000-27050", "port range '27000-27050' without @HOST in '27000-27050'"),
        ("27000-27050@192.0.2.2:0", "bad port '0' in '27000-27050@192.0.2.2:0'"),
        ("27000-27050@192.0.2.2:", "bad port '' in '27000-27050@192.0.2.2:'"),
        ("a-b@192.0.2.2", "bad port 'a' in port range 'a-b'"),
    ],
)  # fmt: skip
def test_each_malformed_port_range_form_is_a_usage_error_naming_it(text: str, named: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_destination(text)
    assert named in str(caught.value)
    assert "expected" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 64


def test_the_command_line_exits_64_with_one_line_naming_a_malformed_range() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "forwarder", "--listen", "127.0.0.1:0", "27050-27000@192.0.2.2"],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 64
    assert result.stderr.splitlines() == [
        "systemd-transparent-udp-forwarderd: bad port range '27050-27000' in '27050-27000@192.0.2.2': its "
        "first port is above its last; expected FIRST-LAST with FIRST <= LAST"
    ]


def test_a_range_with_send_proxy_protocol_is_a_usage_error_naming_the_destination() -> None:
    specs = [parse_destination("dns=192.0.2.2:53"), parse_destination("media=10000-10010@192.0.2.2")]
    with pytest.raises(
        UsageError, match=r"'media=10000-10010@192\.0\.2\.2' with --send-proxy-protocol"
    ) as caught:
        refuse_unserved(specs, Settings(send_proxy_protocol=True, reply="relay"))
    assert caught.value.exit_code == 64
    refuse_unserved(specs, Settings(reply="relay"))  # relay and direct mode serve it


def _original(port: int, family: socket.AddressFamily = socket.AF_INET) -> bytes:
    address = "198.51.100.1" if family == socket.AF_INET else "2001:db8:51::1"
    return sockaddr_bytes(family, (address, port))


ranges = st.integers(1, 65535).flatmap(lambda first: st.tuples(st.just(first), st.integers(first, 65535)))


@given(ranges, st.integers(1, 65535), st.sampled_from(["same", "offset", "one"]), st.integers(1, 65535))
def test_a_port_maps_by_the_rule_and_a_port_outside_the_range_to_nothing(
    listen: tuple[int, int], port: int, rule: str, backend_first: int
) -> None:
    ports = PortRange(*listen)
    if rule == "offset":
        backend_first = min(backend_first, 65535 - (ports.size - 1))
        backend = PortRange(backend_first, backend_first + ports.size - 1)
        mapped = PortMap.of("media", ports, BACKEND, backend, None)
        expected = backend_first + port - ports.first
    elif rule == "one":
        mapped = PortMap.of("media", ports, BACKEND, None, backend_first)
        expected = backend_first
    else:
        mapped = PortMap.of("media", ports, BACKEND, None, None)
        expected = port

    path = mapped.path_for(_original(port))

    if port in ports:
        assert mapped.backend_port(port) == expected
        assert path is not None
        assert path.target == ("192.0.2.2", expected)
        assert path.name == "media"
        assert (mapped.counts.received, mapped.counts.outside) == (1, 0)
    else:
        assert mapped.backend_port(port) is None
        assert path is None
        assert (mapped.counts.received, mapped.counts.outside) == (0, 1)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_a_port_seen_again_gets_the_same_path_so_a_datagram_allocates_nothing_once_its_port_was_seen(
    family: socket.AddressFamily,
) -> None:
    mapped = PortMap.of("media", PortRange(10000, 20000), BACKEND, PortRange(30000, 40000), None)
    first = mapped.path_for(_original(10042, family))

    assert first is mapped.path_for(_original(10042, family))
    assert first is not mapped.path_for(_original(10043, family))
    assert first is not None
    assert first.target == ("192.0.2.2", 30042)


def test_all_ports_to_one_backend_port_share_one_path_so_a_client_keeps_one_flow() -> None:
    mapped = PortMap.of("media", PortRange(10000, 20000), BACKEND, None, 5000)

    assert mapped.path_for(_original(10000)) is mapped.path_for(_original(20000))


def test_two_ports_of_a_range_are_two_flows_of_one_client() -> None:
    machine = ForwardingMachine(Settings())
    mapped = PortMap.of("media", PortRange(27000, 27050), BACKEND, None, None)
    client = sockaddr_bytes(socket.AF_INET, ("203.0.113.7", 4242))
    actions = []
    for port in (27001, 27002, 27001):
        path = mapped.path_for(_original(port))
        assert path is not None
        action = machine.receive(path, client, 10, 0, 0.0)
        if isinstance(action, OpenFlow):
            machine.flow_opened(action.flow, None)
            action = action.flow
        actions.append(action)

    first, second, again = actions
    assert isinstance(first, Flow)
    assert isinstance(second, Flow)
    assert (first.path.target, second.path.target) == (("192.0.2.2", 27001), ("192.0.2.2", 27002))
    assert again is first
    assert len(machine.flows) == 2


def test_the_machine_counts_a_datagram_outside_the_range_and_one_without_an_original_destination() -> None:
    machine = ForwardingMachine(Settings())
    mapped = PortMap.of("media", PortRange(27000, 27050), BACKEND, None, None)
    machine.serve_range(mapped)
    listener = Path("media", BACKEND)
    client = sockaddr_bytes(socket.AF_INET, ("203.0.113.7", 4242))

    outside = machine.outside_range(listener, client, _original(27051))
    unknown = machine.outside_range(listener, client, b"")

    assert (outside.key, unknown.key) == ("outside-range", "unknown-destination")
    assert machine.counters.dropped == {"outside-range": 1, "unknown-destination": 1}


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_an_outside_range_drop_names_the_address_and_port_the_client_asked_not_the_ranges_backend(
    family: socket.AddressFamily,
) -> None:
    machine = ForwardingMachine(Settings())
    listener = Path("media", BACKEND, ("0.0.0.0", 27000))
    client = sockaddr_bytes(socket.AF_INET, ("203.0.113.7", 4242))

    drop = machine.outside_range(listener, client, _original(27051, family))

    asked = "198.51.100.1:27051" if family == socket.AF_INET else "[2001:db8:51::1]:27051"
    assert drop.path is not None
    assert (drop.path.name, str(drop.path.destination)) == ("media", asked)


def test_status_shows_each_range_once_with_its_listener_never_one_entry_per_port() -> None:
    counters = Counters()
    counts = RangeCounts("media", PortRange(10000, 20000))
    counters.ranges.append(counts)
    mapped = PortMap("media", PortRange(10000, 20000), BACKEND, spread=True, counts=counts)
    for port in (10000, 15000, 20000, 20001):
        mapped.path_for(_original(port))
    counters.forwarded = 3

    line = counters.summary(10, flows=3)

    assert line == (
        "3 datagrams forwarded in the last 10 seconds, 0 dropped; since start 3 forwarded, 0 dropped; "
        "ports 10000-20000 on media: 3 received, 1 outside; 3 flows."
    )
    counters.reset()
    assert "ports 10000-20000 on media: 0 received, 0 outside" in counters.summary(10)
    totals = counters.since_start()
    assert totals.ranges == (("media", "10000-20000", 3, 1),)
    text = exposition(totals, 3, {"listen": "[::]:10000"})
    labels = '{listen="[::]:10000",socket="media",range="10000-20000"}'
    assert f"transparent_udp_forwarder_range_datagrams_received_total{labels} 3\n" in text
    assert f"transparent_udp_forwarder_range_datagrams_outside_total{labels} 1\n" in text


def test_a_forwarder_without_ranges_writes_no_range_metrics() -> None:
    assert "range_datagrams" not in exposition(Counters().since_start(), 0)


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        (sockaddr_bytes(socket.AF_INET, ("198.51.100.1", 27042)), (socket.AF_INET, ("198.51.100.1", 27042))),
        (sockaddr_bytes(socket.AF_INET6, ("2001:db8::1", 27042)), (socket.AF_INET6, ("2001:db8::1", 27042))),
        (sockaddr_bytes(socket.AF_INET6, ("::ffff:198.51.100.1", 9)), (socket.AF_INET, ("198.51.100.1", 9))),
    ],
)
def test_a_reply_leaves_from_the_original_destination_a_v4_mapped_one_as_ipv4(
    original: bytes, expected: tuple[socket.AddressFamily, tuple[str, int]]
) -> None:
    assert reply_source(original) == expected


def test_no_client_may_claim_any_port_of_a_ranges_backend() -> None:
    backends = Backends([("192.0.2.3", 53)], [("192.0.2.2", PortRange(30000, 40000))])

    assert ("192.0.2.2", 35000) in backends
    assert ("::ffff:192.0.2.2", 30000) in backends
    assert ("192.0.2.2", 40001) not in backends
    assert ("192.0.2.3", 53) in backends
    assert ("192.0.2.3", 54) not in backends


def test_the_mark_routing_is_checked_once_per_family_of_range_listeners_not_on_the_hosts_own_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from forwarder.io.listeners import ListeningSocket, Route

    asked: list[int] = []

    def check(family: int) -> str | None:
        asked.append(family)
        return f"tproxy: missing for {family}"

    def route(sock: socket.socket, name: str) -> Route:
        v6 = Destination(socket.AF_INET6, "2001:db8::2", 10000)
        mapped = PortMap.of(name, PortRange(10000, 10010), v6, None, None)
        return Route(ListeningSocket(sock, name), mapped.backend, ports=mapped)

    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as own,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as wildcard,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain_sock,
    ):
        own.bind(("::1", 0))
        wildcard.bind(("::", 0))
        plain_sock.bind(("127.0.0.1", 0))
        plain = Route(ListeningSocket(plain_sock, "dns"), Destination(socket.AF_INET, "192.0.2.2", 53))

        # On the host's own address: delivered locally whatever the mark routing; nothing to say.
        assert warn_of_mark_routing([route(own, "media"), plain], check) == []
        assert asked == []
        # A wildcard listener: said once, informational, with when it matters.
        with caplog.at_level(logging.INFO, logger="forwarder"):
            lines = warn_of_mark_routing([route(wildcard, "a"), route(wildcard, "b"), plain], check)
        assert asked == [socket.AF_INET6]
        assert lines == [
            f"tproxy: missing for {socket.AF_INET6} (needed only if the tproxy rule steers addresses that "
            "are not this host's own)"
        ]
        assert [record.levelno for record in caplog.records] == [logging.INFO]
        # Bound to an address that is not the host's (a service address): a warning.
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="forwarder"):
            lines = warn_of_mark_routing([route(own, "media")], check, is_local=lambda _: False)
        assert lines == [f"tproxy: missing for {socket.AF_INET6}"]
        assert [record.levelno for record in caplog.records] == [logging.WARNING]


def test_the_readme_shows_the_shipped_ruleset_verbatim() -> None:
    root = pathlib.Path(__file__).resolve().parent.parent
    ruleset = (root / "fixtures" / "tproxy" / "port-range.nft").read_text()

    assert f"```\n{ruleset}```\n" in (root / "README.md").read_text()


def test_a_range_whose_backend_ports_meet_our_own_listener_is_refused_as_a_loop() -> None:
    from forwarder.errors import ConfigurationError
    from forwarder.io.listeners import ListeningSocket
    from forwarder.service.cli import build_routes, refuse_loops

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        listener = ListeningSocket(sock, "media")
        # The backend range's first port is not ours, but one of its ports is this very socket.
        loop = build_routes([listener], [parse_destination(f"{port - 1}-{port + 1}@127.0.0.1")])
        with pytest.raises(ConfigurationError, match="expected a backend, not a loop") as caught:
            refuse_loops(loop)
        assert caught.value.exit_code == 78
        refuse_loops(build_routes([listener], [parse_destination(f"{port + 1}-{port + 2}@127.0.0.1")]))


@pytest.mark.parametrize(
    ("client", "asked"),
    [
        (
            ("2001:db8:51::10", 4300),
            ("::ffff:198.51.100.1", 27010),
        ),  # an IPv6 client asked a v4-mapped address
        (("::ffff:198.51.100.10", 4300), ("2001:db8:51::1", 27010)),  # a v4-mapped source asked an IPv6 one
    ],
    ids=["v4-mapped-destination", "v4-mapped-source"],
)
def test_a_reply_to_a_client_of_the_other_family_than_the_address_it_asked_is_dropped_not_a_crash(
    client: tuple[str, int], asked: tuple[str, int]
) -> None:
    from forwarder.io.range_replies import PortReplies

    machine = ForwardingMachine(Settings(reply="relay"))
    family = socket.AF_INET if "." in client[0] else socket.AF_INET6
    backend = Destination(family, "192.0.2.2" if family == socket.AF_INET else "2001:db8:2::2", 5353)
    mapped = PortMap.of("media", PortRange(27000, 27099), backend, None, 5353)
    original = sockaddr_bytes(socket.AF_INET6, asked)
    path = mapped.path_for(original)
    assert path is not None
    action = machine.receive(path, sockaddr_bytes(socket.AF_INET6, client), 6, 0, 0.0, local=original)
    assert isinstance(action, OpenFlow)
    # Both families' sockets, as two ranges (an IPv4 and an IPv6 backend) open them; plain UDP sockets
    # stand in for the raw ones: nothing may be sent.
    with socket.socket(socket.AF_INET) as four, socket.socket(socket.AF_INET6) as six:
        replies = PortReplies([four, six], checksum=False)

        assert replies.send(action.flow, memoryview(b"answer")) == errno.EAFNOSUPPORT


def test_a_range_watches_the_destinations_with_ports_in_it_and_nothing_else() -> None:
    backends = Backends(
        [("198.51.100.1", 27030), ("192.0.2.3", 53)],
        [("2001:db8::1", PortRange(26990, 27005)), ("192.0.2.2", PortRange(30000, 30050))],
    )
    mapped = PortMap.of("media", PortRange(27000, 27050), BACKEND, None, None)

    mapped.watch(backends)

    assert mapped.loops == (
        ("198.51.100.1", PortRange(27030, 27030)),
        ("2001:db8::1", PortRange(27000, 27005)),
    )
    assert mapped.destination_of(sockaddr_bytes(socket.AF_INET, ("198.51.100.1", 27030))) == "198.51.100.1"
    assert mapped.destination_of(sockaddr_bytes(socket.AF_INET6, ("::ffff:198.51.100.1", 27030))) == (
        "198.51.100.1"
    )
    assert mapped.destination_of(sockaddr_bytes(socket.AF_INET6, ("2001:db8::1", 27005))) == "2001:db8::1"
    assert mapped.destination_of(sockaddr_bytes(socket.AF_INET6, ("2001:db8::1", 27006))) is None
    assert mapped.destination_of(sockaddr_bytes(socket.AF_INET, ("198.51.100.2", 27030))) is None
    # A range whose destinations have no port in it (the usual case) watches nothing: no cost per datagram.
    apart = PortMap.of("media", PortRange(27000, 27050), BACKEND, PortRange(37000, 37050), None)
    apart.watch(Backends([], [("192.0.2.2", apart.backend_ports)]))
    assert apart.loops == ()


class _Local:
    """A locality probe of one address (or none)."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    def __call__(self, address: str) -> bool:
        return address == self.address

    def forget(self) -> None:
        pass


@pytest.mark.parametrize(("local", "expected"), [(True, "loop"), (False, None)])
def test_a_datagram_to_our_own_destination_is_a_loop_only_when_that_address_is_this_hosts(
    local: bool, expected: str | None
) -> None:
    # Not this host's: a router steering its clients' datagrams for the backend through the forwarder,
    # whose own datagrams (locally sent, never through prerouting) are not steered back.
    machine = ForwardingMachine(
        Settings(), is_local=_Local("198.51.100.1" if local else None), backends=[("198.51.100.1", 27030)]
    )
    mapped = PortMap.of("media", PortRange(27000, 27050), BACKEND, None, 27030)
    machine.serve_range(mapped)
    listener = Path("media", BACKEND, ("0.0.0.0", 27000))
    client = sockaddr_bytes(socket.AF_INET, ("203.0.113.7", 4242))

    drop = machine.range_loop(mapped, listener, client, _original(27030))

    assert (drop and drop.key) == expected
    if drop is not None:
        assert drop.path is not None
        assert str(drop.path.destination) == "198.51.100.1:27030"
        assert machine.counters.dropped == {"loop": 1}
    assert machine.range_loop(mapped, listener, client, _original(27031)) is None
