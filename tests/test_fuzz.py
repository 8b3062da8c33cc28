"""Fuzzing with hypothesis: destination parsing, socket-activation environments, and the forwarding core
(presentable sources, the flow table) never fail with anything but their documented errors and keep their
promises; and, in a lab, datagrams of random sizes and families arrive exactly as sent.

The lab test (fixtures/topologies/dual-stack.toml), one forwarder listening on both families:

    client 198.51.100.10 2001:db8:51::10 --- [host: forwarder] --- 192.0.2.2 2001:db8:2::2 backend
"""

import ipaddress
import random
import socket
import string
import subprocess
import sys
from collections.abc import Callable
from typing import TypeVar

import pytest
from forwarder_helpers import InspectableTable
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from forwarder.core.addresses import plain_address
from forwarder.core.counters import DropReason
from forwarder.core.destination import Destination, decimal, parse_destination, parse_listen
from forwarder.core.flows import Entry
from forwarder.core.policy import presentable_source
from forwarder.errors import UsageError, shown
from forwarder.service.logs import stderr_is_journal
from forwarder.service.notify import watchdog_interval
from netlab import Lab, load_topology, start_forwarder
from netlab.lab.process import python_env
from netlab.programs.crafted import Crafted

T = TypeVar("T")
# No example database: runs leave nothing behind in the checkout.
FUZZ = settings(database=None, max_examples=300, deadline=None)

# --- destination parsing ---------------------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
HOST_NAMES = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
PORTS = st.integers(1, 65535)
# systemd allows any printable ASCII but ':' in FileDescriptorName=, '=' included.
FD_NAMES = st.text(alphabet=string.ascii_letters + string.digits + "-_.@=", min_size=1, max_size=16)
# Text made of the characters that matter to the parser, so the fuzzer meets the hard cases often.
TRICKY = st.text(alphabet="[]:=%.0123456789abcdefx:²٣ \t", max_size=40)
LONG_PORTS = st.tuples(st.sampled_from(["h:", "[::1]:", "a=h:"]), st.integers(1, 6000)).map(
    lambda item: item[0] + "1" * item[1]
)


@FUZZ
@given(st.one_of(st.text(max_size=60), TRICKY, LONG_PORTS))
@example("192.0.2.2:²")  # a digit to str.isdigit, not to int()
@example("192.0.2.2:" + "9" * 5000)  # more digits than int() converts
def test_parsing_any_destination_gives_a_spec_or_a_usage_error(text: str) -> None:
    for parse in (parse_destination, parse_listen):
        result = outcome(parse, text)
        if isinstance(result, UsageError):
            assert result.exit_code == 64
            assert shown(text) in str(result)
            assert len(str(result)) < 400  # long input is cut, never echoed in full


def outcome(parse: Callable[[str], T], text: str) -> T | UsageError:
    """What parsing `text` gives: the result, or the UsageError (any other exception propagates)."""
    try:
        return parse(text)
    except UsageError as error:
        return error


def named(fd_name: str | None, body: str) -> str:
    return body if fd_name is None else f"{fd_name}={body}"


@FUZZ
@given(
    st.one_of(HOST_NAMES, st.ip_addresses(v=4).map(str)),
    st.one_of(st.none(), PORTS),
    st.one_of(st.none(), FD_NAMES),
)
def test_host_and_ipv4_destinations_round_trip(host: str, port: int | None, fd_name: str | None) -> None:
    text = named(fd_name, host if port is None else f"{host}:{port}")
    spec = parse_destination(text)
    assert (spec.host, spec.port, spec.fd_name, spec.text) == (host, port, fd_name, text)


@FUZZ
@given(st.ip_addresses(v=6).map(str), st.one_of(st.none(), PORTS), st.one_of(st.none(), FD_NAMES))
def test_ipv6_destinations_round_trip_bracketed_and_bare_unless_ambiguous(
    address: str, port: int | None, fd_name: str | None
) -> None:
    bracketed = parse_destination(named(fd_name, f"[{address}]" if port is None else f"[{address}]:{port}"))
    assert (bracketed.host, bracketed.port, bracketed.fd_name) == (address, port, fd_name)
    bare = outcome(parse_destination, named(fd_name, address))
    if isinstance(bare, UsageError):
        # Only a literal that also reads as address:port is refused, and the message shows both spellings.
        head, _, tail = address.rpartition(":")
        assert tail.isdigit()
        ipaddress.IPv6Address(head)
        assert f"[{address}]" in str(bare)
        assert f"[{head}]:{tail}" in str(bare)
    else:
        assert (bare.host, bare.port, bare.fd_name) == (address, None, fd_name)


@FUZZ
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), PORTS)
def test_a_resolved_destination_written_out_parses_back_to_itself(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    destination = Destination(family, str(address), port)
    spec = parse_destination(str(destination))
    assert (spec.host, spec.port) == (str(address), port)


@FUZZ
@given(st.one_of(st.text(max_size=30), st.integers(0, 10**30).map(str), st.just("1" * 5000), TRICKY))
def test_decimal_accepts_exactly_plain_ascii_numbers(text: str) -> None:
    value = decimal(text)
    if value is None:
        assert not (text.isascii() and text.isdigit()) or len(text) > sys.get_int_max_str_digits()
    else:
        assert text.isascii()
        assert str(value) == (text.lstrip("0") or "0")


# --- activation environments ----------------------------------------------------------------------------

ENVIRONMENT_VALUES = st.one_of(
    st.none(), st.text(max_size=12), st.integers(0, 9).map(str), st.just("²"), st.just("9" * 5000)
)


@FUZZ
@given(ENVIRONMENT_VALUES, ENVIRONMENT_VALUES, st.integers(1, 2**22))
@example("²", None, 1)  # WATCHDOG_USEC and JOURNAL_STREAM with a non-ASCII digit used to raise ValueError
def test_watchdog_and_journal_variables_never_raise(
    usec: str | None, watchdog_pid: str | None, pid: int
) -> None:
    environ = {
        key: value for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", watchdog_pid)) if value
    }
    interval = watchdog_interval(environ, pid)
    assert interval is None or interval > 0
    assert stderr_is_journal({"JOURNAL_STREAM": f"{usec}:{watchdog_pid}"}) in (False, True)


# Runs in a child: socket activation takes fds 3.. of the process, which must not be pytest's. The child
# places a known set of fds at 3.. before each example, runs hypothesis itself, and exits non-zero with the
# falsifying example on failure.
ACTIVATION_CHILD = r"""
import fcntl, os, socket, sys
from hypothesis import given, settings, strategies as st
from forwarder.service.activation import listen_sockets
from forwarder.errors import ConfigurationError

udp1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp1.bind(("127.0.0.1", 0))
udp2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp2.bind(("127.0.0.1", 0))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
pipe_read, pipe_write = os.pipe()
# Originals far above 3..8, put in place again before every example: fds 3, 4 are UDP sockets, then a TCP
# socket, a pipe, an AF_UNIX socket, and fd 8 is closed.
LAYOUT = [fcntl.fcntl(item if isinstance(item, int) else item.fileno(), fcntl.F_DUPFD, 200)
          for item in (udp1, udp2, tcp, pipe_read, unix)]
USABLE = 2
PID = os.getpid()

def place():
    for index, fd in enumerate(LAYOUT):
        os.dup2(fd, 3 + index)
    try:
        os.close(8)
    except OSError:
        pass

values = st.one_of(
    st.none(), st.text(max_size=12), st.integers(0, 9).map(str), st.sampled_from([str(PID), f"00{PID}", "²"]),
    st.just("9" * 5000),
)
names = st.one_of(values, st.lists(st.text(alphabet="abc:=", max_size=3), max_size=4).map(":".join))

@settings(database=None, max_examples=400, deadline=None)
@given(st.one_of(values, st.just(str(PID))), st.one_of(values, st.integers(1, 9).map(str)), names)
def check(listen_pid, listen_fds, fd_names):
    environ = {key: value for key, value in
               (("LISTEN_PID", listen_pid), ("LISTEN_FDS", listen_fds), ("LISTEN_FDNAMES", fd_names))
               if value is not None}
    place()
    try:
        listeners = listen_sockets(environ)
    except ConfigurationError as error:
        assert error.exit_code == 78
        listeners = None
    assert not any(key.startswith("LISTEN_") for key in environ), environ
    plain = lambda text: text is not None and text.isascii() and text.isdigit() and len(text) < 100
    count = int(listen_fds) if plain(listen_fds) else None
    given_names = fd_names.split(":") if fd_names else []
    fits = (
        plain(listen_pid) and int(listen_pid) == PID and count is not None and 1 <= count <= USABLE
        and (not given_names or len(given_names) == count)
    )
    if listeners is None:
        assert not fits, (listen_pid, listen_fds, fd_names)
        return
    assert fits, (listen_pid, listen_fds, fd_names)
    assert [listener.name for listener in listeners] == (given_names or ["unknown"] * count)
    for listener in listeners:
        listener.sock.detach()  # the fds are put in place again for the next example

check()
print("ok")
"""


def test_any_activation_environment_gives_sockets_or_a_configuration_error_with_exit_78() -> None:
    result = subprocess.run(
        [sys.executable, "-c", ACTIVATION_CHILD],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


# --- the forwarding core --------------------------------------------------------------------------------

CLIENT_PORTS = st.integers(0, 65535)
FAMILIES = st.sampled_from([socket.AF_INET, socket.AF_INET6])


@FUZZ
@given(st.ip_addresses(v=4), CLIENT_PORTS, FAMILIES, st.booleans())
def test_an_ipv4_client_plain_or_v4_mapped_is_presented_as_plain_ipv4_to_an_ipv4_backend_only(
    address: ipaddress.IPv4Address, port: int, family: socket.AddressFamily, mapped: bool
) -> None:
    client = (f"::ffff:{address}", port, 0, 0) if mapped else (str(address), port)
    result = presentable_source(client, family)
    if port == 0:
        assert result is DropReason.ZERO_PORT
    elif family == socket.AF_INET6:
        assert result is DropReason.FAMILY_MISMATCH
    elif address.is_unspecified:
        assert result is DropReason.UNSPECIFIED_SOURCE
    elif address.is_multicast:
        assert result is DropReason.MULTICAST_SOURCE
    elif address == ipaddress.IPv4Address("255.255.255.255"):
        assert result is DropReason.BROADCAST_SOURCE
    elif address.is_loopback:
        assert result is DropReason.LOOPBACK_SOURCE
    else:
        assert result == (str(address), port)


@FUZZ
@given(st.ip_addresses(v=6), CLIENT_PORTS, FAMILIES, st.sampled_from(["", "%2", "%eth0"]))
def test_an_ipv6_client_is_presented_without_scope_to_an_ipv6_backend_only(
    address: ipaddress.IPv6Address, port: int, family: socket.AddressFamily, scope: str
) -> None:
    result = presentable_source((f"{address}{scope}", port, 0, 0), family)
    if address.ipv4_mapped is not None:
        return  # the test above covers v4-mapped clients
    if port == 0:
        assert result is DropReason.ZERO_PORT
    elif family == socket.AF_INET:
        assert result is DropReason.FAMILY_MISMATCH
    elif address.is_unspecified:
        assert result is DropReason.UNSPECIFIED_SOURCE
    elif address.is_multicast:
        assert result is DropReason.MULTICAST_SOURCE
    elif address.is_loopback:
        assert result is DropReason.LOOPBACK_SOURCE
    elif address.is_link_local:
        assert result is DropReason.LINK_LOCAL_SOURCE
    else:
        assert result == (str(address), port)


@FUZZ
@given(
    st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
    CLIENT_PORTS,
    FAMILIES,
    st.frozensets(st.ip_addresses(v=4).map(str), max_size=3),
)
def test_the_source_presented_is_exactly_the_client_or_nothing(
    address: str, port: int, family: socket.AddressFamily, broadcasts: frozenset[str]
) -> None:
    client = (address, port, 0, 0) if ":" in address else (address, port)
    result = presentable_source(client, family, broadcasts.__contains__)
    if isinstance(result, DropReason):
        return
    presented = ipaddress.ip_address(result[0])
    assert (presented, result[1]) == (plain_address(address), port)
    # Never an address the kernel would replace with one of the host's own.
    assert not presented.is_unspecified
    assert not presented.is_multicast
    assert str(presented) not in broadcasts
    assert presented != ipaddress.IPv4Address("255.255.255.255")


class Serial(Entry):
    """A table entry carrying the serial number it was added with."""

    __slots__ = ("serial",)

    def __init__(self, serial: int) -> None:
        super().__init__()
        self.serial = serial


def serials(entries: list[Serial]) -> list[int]:
    return [entry.serial for entry in entries]


class FlowTableMachine(RuleBasedStateMachine):
    """Random operation sequences against the documented rules: at most `capacity` entries; when full,
    the oldest-inserted entry is evicted unless it was referenced (got) since it was inserted or last
    spared, in which case it is spared once and moves to the back; `expire(now)` removes exactly the
    entries unused for longer than the idle timeout."""

    keys = st.integers(0, 9)

    @initialize(capacity=st.integers(1, 5), idle_timeout=st.sampled_from([0.5, 1.0, 3.0]))
    def start(self, capacity: int, idle_timeout: float) -> None:
        self.table: InspectableTable[int, Serial] = InspectableTable(capacity, idle_timeout)
        self.capacity, self.idle_timeout = capacity, idle_timeout
        # The model: key -> [value, referenced, last_used], in insertion order.
        self.model: dict[int, list[float]] = {}
        self.now = 0.0
        self.serial = 0

    @rule(seconds=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.5]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(key=keys)
    def get(self, key: int) -> None:
        expected = self.model.get(key)
        got = self.table.get(key, self.now)
        assert (None if got is None else got.serial) == (None if expected is None else expected[0])
        if expected is not None:
            expected[1] = True
            expected[2] = self.now

    @precondition(lambda self: len(self.model) < 10)
    @rule(key=keys)
    def add(self, key: int) -> None:
        if key in self.model:
            return
        self.serial += 1
        evicted = serials(self.table.add(key, Serial(self.serial), self.now))
        expected = []
        while len(self.model) >= self.capacity:
            oldest = next(iter(self.model))
            entry = self.model.pop(oldest)
            if entry[1]:
                entry[1] = False
                self.model[oldest] = entry
            else:
                expected.append(int(entry[0]))
        self.model[key] = [self.serial, False, self.now]
        assert evicted == expected

    @rule(key=keys)
    def remove(self, key: int) -> None:
        expected = self.model.pop(key, None)
        removed = self.table.remove(key)
        assert (None if removed is None else removed.serial) == (None if expected is None else expected[0])

    @rule()
    def expire(self) -> None:
        limit = self.now - self.idle_timeout
        stale = [key for key, entry in self.model.items() if entry[2] < limit]
        expected = sorted(int(self.model.pop(key)[0]) for key in stale)
        assert sorted(serials(self.table.expire(self.now))) == expected

    @invariant()
    def same_entries_in_the_same_order_and_never_too_many(self) -> None:
        if not hasattr(self, "table"):
            return
        assert list(self.table) == list(self.model)
        assert len(self.table) <= self.capacity


TestFlowTable = FlowTableMachine.TestCase
TestFlowTable.settings = settings(database=None, max_examples=200, stateful_step_count=40, deadline=None)


# --- random sizes and families through the lab ----------------------------------------------------------

V4_LIMIT, V6_LIMIT = 65507, 65527
DATAGRAMS = st.lists(
    st.one_of(
        st.tuples(st.just("v4"), st.integers(0, V4_LIMIT), st.integers(0, 2**32)),
        st.tuples(st.just("v6"), st.integers(0, V6_LIMIT), st.integers(0, 2**32)),
    ),
    min_size=1,
    max_size=4,
)


@pytest.mark.privileged
def test_datagrams_of_random_sizes_and_families_arrive_exactly_as_sent() -> None:
    # One lab for every example: hypothesis runs the inner function many times within this one test.
    with Lab() as lab:
        lab.build(load_topology("dual-stack"))
        backends = {
            "v4": lab["backend"].udp_socket("192.0.2.2", 27000),
            "v6": lab["backend"].udp_socket("2001:db8:2::2", 27000),
        }
        clients = {
            "v4": lab["client"].udp_socket("198.51.100.10", 0),
            "v6": lab["client"].udp_socket("2001:db8:51::10", 0),
        }
        targets = {"v4": ("198.51.100.1", 27000), "v6": ("2001:db8:51::1", 27000)}
        for sock in backends.values():
            sock.settimeout(10)
        forwarder = start_forwarder(
            lab["host"], ["198.51.100.1:27000", "[2001:db8:51::1]:27000"], ["192.0.2.2", "[2001:db8:2::2]"]
        )
        clients["v4"].sendto(b"wake", targets["v4"])
        assert backends["v4"].recvfrom(65535)[0] == b"wake"
        forwarder.wait_ready()

        @settings(database=None, max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(DATAGRAMS)
        def arrive_as_sent(datagrams: list[tuple[str, int, int]]) -> None:
            for family, size, seed in datagrams:
                payload = random.Random(seed).randbytes(size)
                clients[family].sendto(payload, targets[family])
                data, source = backends[family].recvfrom(65536)
                assert (len(data), data == payload) == (size, True)
                assert source[:2] == clients[family].getsockname()[:2]

        arrive_as_sent()
        assert forwarder.is_running(), forwarder.process.output()


# --- any source address through the lab ----------------------------------------------------------------

# Sources the kernel or the forwarder must not turn into the host's own: unspecified, broadcast (limited,
# and the directed broadcast of the client link 198.51.100.0/24), multicast, loopback, link-local, the
# host's own addresses; and ordinary clients from the documentation prefixes.
V4_SOURCES = st.one_of(
    st.sampled_from(
        [
            *("0.0.0.0", "255.255.255.255", "198.51.100.255", "192.0.2.255", "224.0.0.1", "239.1.2.3"),
            *("127.0.0.1", "198.51.100.1", "192.0.2.1", "198.51.100.10"),
        ]
    ),
    st.ip_addresses(v=4, network="203.0.113.0/24").map(str),
)
V6_SOURCES = st.one_of(
    st.sampled_from(["::", "ff02::1", "ff0e::1", "::1", "fe80::10", "2001:db8:51::1", "::ffff:198.51.100.7"]),
    st.ip_addresses(v=6, network="2001:db8:113::/48").map(str),
)
SOURCES = st.lists(
    st.one_of(st.tuples(V4_SOURCES, st.integers(0, 65535)), st.tuples(V6_SOURCES, st.integers(0, 65535))),
    min_size=1,
    max_size=8,
)


def same_endpoint(seen: tuple[str, int], sent: tuple[str, int]) -> bool:
    """Whether a backend's recvfrom address is the crafted source (scope ids and v4 mapping aside)."""
    return (plain_address(seen[0]), seen[1]) == (plain_address(sent[0]), sent[1])


@pytest.mark.privileged
def test_whatever_the_source_the_backend_sees_exactly_the_client_or_nothing() -> None:
    with Lab() as lab:
        lab.build(
            load_topology("dual-stack")
            # A datagram from the client link's broadcast address reaches the forwarder only without
            # reverse-path filtering (new namespaces start with 0; set it so the test does not depend on it).
            .sysctl("host", "net.ipv4.conf.all.rp_filter", "0")
            .sysctl("host", "net.ipv4.conf.default.rp_filter", "0")
        )
        backends = {
            4: lab["backend"].udp_socket("192.0.2.2", 27000),
            6: lab["backend"].udp_socket("2001:db8:2::2", 27000),
        }
        clients = {
            4: lab["client"].udp_socket("198.51.100.10", 0),
            6: lab["client"].udp_socket("2001:db8:51::10", 0),
        }
        targets = {4: ("198.51.100.1", 27000), 6: ("2001:db8:51::1", 27000)}
        for sock in backends.values():
            sock.settimeout(10)
        forwarder = start_forwarder(
            lab["host"], ["198.51.100.1:27000", "[2001:db8:51::1]:27000"], ["192.0.2.2", "[2001:db8:2::2]"]
        )
        clients[4].sendto(b"wake", targets[4])
        assert backends[4].recvfrom(65535)[0] == b"wake"
        forwarder.wait_ready()

        @settings(database=None, max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(SOURCES)
        @example([("::", 4242), ("198.51.100.255", 4242), ("0.0.0.0", 4242)])  # the host's address came out
        def exactly_the_client_or_nothing(sources: list[tuple[str, int]]) -> None:
            crafted = []
            for index, (source, port) in enumerate(sources):
                version = 6 if ":" in source else 4
                crafted.append(Crafted(source, targets[version][0], port, 27000, f"crafted-{index}".encode()))
            lab["client"].send_crafted(crafted)
            for version, backend in backends.items():
                # One listener's datagrams are forwarded in order: when this one arrives, every crafted one
                # before it has been forwarded or dropped.
                clients[version].sendto(b"sentinel", targets[version])
                while True:
                    payload, seen = backend.recvfrom(65535)
                    if payload == b"sentinel":
                        assert same_endpoint(seen, clients[version].getsockname())
                        break
                    index = int(payload.removeprefix(b"crafted-"))
                    assert same_endpoint(seen, sources[index]), (payload, seen, sources[index])

        exactly_the_client_or_nothing()
        assert forwarder.is_running(), forwarder.process.output()
