"""The forwarding state machine without sockets or privileges: every drop reason, flows opened and hit,
eviction, idle expiry, local sources, and failures reported back by the engine.

The machine never touches the handle the engine gives it for a flow, so a plain object stands in for it.
"""

import errno
import socket
from typing import cast

import pytest

from forwarder.core.actions import CloseFlows, Drop, OpenFlow, SendOnce
from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.counters import DropReason
from forwarder.core.destination import Destination
from forwarder.core.flows import Flow, Path
from forwarder.core.icmp import SO_EE_ORIGIN_ICMP, QueuedError
from forwarder.core.machine import ForwardingMachine
from forwarder.core.policy import SourcePolicy, Verdict

V4 = Path("dns", Destination(socket.AF_INET, "192.0.2.2", 53))
V6 = Path("dns6", Destination(socket.AF_INET6, "2001:db8:2::2", 53))
OTHER = Path("game", Destination(socket.AF_INET, "192.0.2.2", 27015))


def v4(address: str, port: int) -> bytes:
    return sockaddr_bytes(socket.AF_INET, (address, port))


def v6(address: str, port: int, scope: int = 0) -> bytes:
    return sockaddr_bytes(socket.AF_INET6, (address, port, 0, scope))


def handle() -> socket.socket:
    return cast(socket.socket, object())


class Addresses:
    """A locality probe answering from a set the test changes; counts how often it was told to forget."""

    def __init__(self, *local: str) -> None:
        self.local = set(local)
        self.forgotten = 0

    def __call__(self, address: str) -> bool:
        return address in self.local

    def forget(self) -> None:
        self.forgotten += 1


def opened(machine: ForwardingMachine, path: Path, client: bytes, now: float) -> Flow:
    """Receive a first datagram and report its flow opened, as the engine would."""
    action = machine.receive(path, client, 10, 0, now)
    assert isinstance(action, OpenFlow)
    assert machine.flow_opened(action.flow, handle()) is None
    return action.flow


@pytest.mark.parametrize(
    ("path", "client", "reason"),
    [
        (V4, v4("203.0.113.7", 0), "zero-port"),
        (V4, v4("127.0.0.1", 4242), "loopback-source"),
        (V6, v6("::1", 4242), "loopback-source"),
        (V6, v6("fe80::7", 4242, scope=2), "link-local-source"),
        (V4, v6("2001:db8::7", 4242), "family-mismatch"),
        (V6, v4("203.0.113.7", 4242), "family-mismatch"),
        (V6, v6("::ffff:203.0.113.7", 4242), "family-mismatch"),
    ],
    ids=["port-0", "127.0.0.1", "::1", "fe80::7", "v6-to-v4", "v4-to-v6", "v4-mapped-to-v6"],
)
def test_a_client_that_cannot_be_presented_is_dropped_by_reason_and_counted(
    path: Path, client: bytes, reason: str
) -> None:
    machine = ForwardingMachine()
    assert machine.receive(path, client, 10, 0, 1.0) == Drop(reason, path, client)
    assert (machine.counters.forwarded, machine.counters.dropped) == (0, {reason: 1})
    assert len(machine.flows) == 0


def test_a_truncated_datagram_is_dropped_even_on_an_open_flow() -> None:
    machine = ForwardingMachine()
    client = v4("203.0.113.7", 4242)
    opened(machine, V4, client, 1.0)
    action = machine.receive(V4, client, 100, socket.MSG_TRUNC, 2.0)
    assert isinstance(action, Drop)
    assert action.key == "truncated"
    assert (machine.counters.forwarded, machine.counters.dropped) == (1, {"truncated": 1})


def test_the_first_datagram_opens_a_flow_presenting_the_client_and_the_next_ones_hit_it() -> None:
    machine = ForwardingMachine()
    client = v4("203.0.113.7", 4242)
    first = machine.receive(V4, client, 10, 0, 1.0)
    assert isinstance(first, OpenFlow)
    assert first.flow.presented == ("203.0.113.7", 4242)
    assert len(machine.flows) == 0  # kept only once the engine has its socket
    machine.flow_opened(first.flow, handle())

    assert machine.receive(V4, client, 10, 0, 2.0) is first.flow
    assert machine.receive(V4, client, 10, 0, 3.0) is first.flow
    assert machine.counters.forwarded == 3
    assert first.flow.last_used == 3.0


def test_a_v4_mapped_client_of_a_dual_stack_socket_is_presented_as_plain_ipv4() -> None:
    action = ForwardingMachine().receive(V4, v6("::ffff:203.0.113.7", 4242), 10, 0, 1.0)
    assert isinstance(action, OpenFlow)
    assert action.flow.presented == ("203.0.113.7", 4242)


def test_an_ipv6_client_is_presented_without_its_flow_info() -> None:
    action = ForwardingMachine().receive(V6, v6("2001:db8:113::7", 4242), 10, 0, 1.0)
    assert isinstance(action, OpenFlow)
    assert action.flow.presented == ("2001:db8:113::7", 4242)


def test_one_client_gets_a_flow_per_destination() -> None:
    machine = ForwardingMachine()
    client = v4("203.0.113.7", 4242)
    to_dns = opened(machine, V4, client, 1.0)
    to_game = opened(machine, OTHER, client, 1.0)
    assert to_dns is not to_game
    assert machine.receive(OTHER, client, 10, 0, 2.0) is to_game
    assert len(machine.flows) == 2


def test_a_local_source_is_sent_once_and_never_kept() -> None:
    machine = ForwardingMachine(is_local=Addresses("198.51.100.1"))
    client = v4("198.51.100.1", 5000)
    for now in (1.0, 2.0):
        assert machine.receive(V4, client, 10, 0, now) == SendOnce(V4, client, ("198.51.100.1", 5000))
    assert machine.counters.forwarded == 2
    assert len(machine.flows) == 0


@pytest.mark.parametrize(
    ("error_number", "reason"),
    [
        (errno.EADDRINUSE, "local-source:EADDRINUSE"),
        (errno.EINVAL, "local-source:EINVAL"),
        (errno.ENOBUFS, "send-error:ENOBUFS"),
    ],
)
def test_a_failed_one_shot_send_is_a_local_source_drop_only_for_its_own_errors(
    error_number: int, reason: str
) -> None:
    machine = ForwardingMachine(is_local=Addresses("198.51.100.1"))
    action = machine.receive(V4, v4("198.51.100.1", 5000), 10, 0, 1.0)
    assert isinstance(action, SendOnce)
    assert machine.send_once_failed(action, error_number).key == reason
    assert (machine.counters.forwarded, machine.counters.dropped) == (0, {reason: 1})


def test_a_flow_that_cannot_be_opened_is_a_send_error_and_is_not_kept() -> None:
    machine = ForwardingMachine()
    client = v4("203.0.113.7", 4242)
    action = machine.receive(V4, client, 10, 0, 1.0)
    assert isinstance(action, OpenFlow)
    assert machine.open_failed(action.flow, errno.EMFILE) == Drop("send-error:EMFILE", V4, client)
    assert (machine.counters.forwarded, machine.counters.dropped) == (0, {"send-error:EMFILE": 1})
    assert isinstance(machine.receive(V4, client, 10, 0, 2.0), OpenFlow)  # tried again next time


def test_a_failed_send_takes_the_datagram_back_from_forwarded_and_counts_it_by_errno() -> None:
    machine = ForwardingMachine()
    client = v4("203.0.113.7", 4242)
    flow = opened(machine, V4, client, 1.0)
    machine.receive(V4, client, 10, 0, 2.0)
    assert machine.send_failed(flow.path, client, errno.EPERM) == Drop("send-error:EPERM", V4, client)
    assert (machine.counters.forwarded, machine.counters.dropped) == (1, {"send-error:EPERM": 1})
    assert len(machine.flows) == 1  # a failed send never closes the flow


def test_a_failed_receive_is_counted_by_errno() -> None:
    machine = ForwardingMachine()
    assert machine.receive_failed(V4, errno.ENOMEM) == Drop("receive-error:ENOMEM", V4, None)
    assert machine.counters.dropped == {"receive-error:ENOMEM": 1}


def test_opening_a_flow_beyond_max_flows_evicts_the_least_recently_used_one() -> None:
    machine = ForwardingMachine(max_flows=2)
    a, b, c = v4("203.0.113.1", 1), v4("203.0.113.2", 2), v4("203.0.113.3", 3)
    flow_a = opened(machine, V4, a, 1.0)
    flow_b = opened(machine, V4, b, 2.0)
    machine.receive(V4, a, 10, 0, 3.0)  # a is used again: b is the one to go
    action = machine.receive(V4, c, 10, 0, 4.0)
    assert isinstance(action, OpenFlow)

    assert machine.flow_opened(action.flow, handle()) == CloseFlows((flow_b,))
    assert {flow.presented for flow in machine.flows.values()} == {("203.0.113.1", 1), ("203.0.113.3", 3)}
    assert machine.receive(V4, a, 10, 0, 5.0) is flow_a


def test_idle_flows_expire_and_a_used_one_stays() -> None:
    machine = ForwardingMachine(idle_timeout=5)
    idle = opened(machine, V4, v4("203.0.113.1", 1), 100.0)
    busy = opened(machine, V4, v4("203.0.113.2", 2), 100.0)
    machine.receive(V4, busy.raw_peer, 10, 0, 103.0)

    assert machine.expire(104.0) == CloseFlows(())
    assert machine.expire(106.0) == CloseFlows((idle,))
    assert list(machine.flows.values()) == [busy]


def test_the_machine_times_its_own_idle_sweep_at_half_the_idle_timeout() -> None:
    machine = ForwardingMachine(idle_timeout=4)
    assert machine.next_deadline() == float("inf")  # no clock before the loop's first turn
    assert machine.on_timer(100.0) is None  # the first call starts it
    assert machine.next_deadline() == 102.0
    idle = opened(machine, V4, v4("203.0.113.1", 1), 100.0)

    assert machine.on_timer(101.9) is None  # not due yet
    assert machine.on_timer(102.0) == CloseFlows(())  # swept: idle for 2 s of 4
    assert machine.next_deadline() == 104.0
    assert machine.on_timer(104.5) == CloseFlows((idle,))
    assert machine.next_deadline() == 106.5


def test_a_flow_whose_source_became_local_is_closed_at_the_next_sweep_with_fresh_answers() -> None:
    addresses = Addresses()
    machine = ForwardingMachine(is_local=addresses)
    flow = opened(machine, V4, v4("203.0.113.7", 4242), 1.0)
    addresses.local.add("203.0.113.7")

    assert machine.expire(2.0) == CloseFlows((flow,))
    assert addresses.forgotten == 1
    assert len(machine.flows) == 0


def test_the_policy_gives_one_verdict_per_client() -> None:
    policy = SourcePolicy(Addresses("192.0.2.1"), Addresses("192.0.2.255"), names_in_header=False)
    assert policy.judge(("203.0.113.7", 4242), socket.AF_INET) == (Verdict.BIND, ("203.0.113.7", 4242))
    assert policy.judge(("::ffff:192.0.2.1", 53, 0, 0), socket.AF_INET) == (Verdict.ONCE, ("192.0.2.1", 53))
    assert policy.judge(("192.0.2.255", 53), socket.AF_INET) is DropReason.BROADCAST_SOURCE
    assert policy.judge(("127.0.0.1", 53), socket.AF_INET) is DropReason.LOOPBACK_SOURCE
    assert policy.judge(("192.0.2.2", 53), socket.AF_INET, ("192.0.2.2", 53)) is DropReason.BACKEND_SOURCE
    header = SourcePolicy(Addresses("192.0.2.1"), Addresses(), names_in_header=True)
    assert header.judge(("127.0.0.1", 53), socket.AF_INET6) == (Verdict.HEADER, ("127.0.0.1", 53))
    assert header.judge(("192.0.2.1", 53), socket.AF_INET) == (Verdict.HEADER, ("192.0.2.1", 53))


def test_the_sweep_asks_the_policy_that_opened_the_flow_so_broadcast_is_judged_once() -> None:
    broadcasts = Addresses()
    machine = ForwardingMachine(is_broadcast=broadcasts)
    flow = opened(machine, V4, v4("203.0.113.255", 4242), 1.0)
    broadcasts.local.add("203.0.113.255")  # the host got a 203.0.113.0/24 address: its broadcast now

    assert machine.policy.judge(flow.presented, socket.AF_INET) is DropReason.BROADCAST_SOURCE
    assert machine.expire(2.0) == CloseFlows((flow,))
    assert broadcasts.forgotten == 1


def test_a_failed_send_is_a_local_source_drop_only_for_a_one_shot_send() -> None:
    assert SourcePolicy.refused(errno.EADDRINUSE, Verdict.ONCE) is DropReason.LOCAL_SOURCE
    assert SourcePolicy.refused(errno.EINVAL, Verdict.ONCE) is DropReason.LOCAL_SOURCE
    assert SourcePolicy.refused(errno.EADDRINUSE, Verdict.BIND) is DropReason.SEND_ERROR
    assert SourcePolicy.refused(errno.ECONNREFUSED, Verdict.ONCE) is DropReason.SEND_ERROR


def test_close_hands_back_every_flow() -> None:
    machine = ForwardingMachine()
    flows = [opened(machine, V4, v4("203.0.113.1", port), 1.0) for port in (1, 2, 3)]
    assert machine.close() == CloseFlows(tuple(flows))
    assert len(machine.flows) == 0


# --- replies (relay mode) ---------------------------------------------------------------------------------

BACKEND = ("192.0.2.2", 53)


def relaying(**options: object) -> ForwardingMachine:
    return ForwardingMachine(relay=True, **options)  # type: ignore[arg-type]


def test_a_reply_from_the_flows_destination_is_relayed_to_its_client_and_counted() -> None:
    machine = relaying()
    flow = opened(machine, V4, v4("203.0.113.7", 4242), 1.0)
    assert machine.reply_received(flow, BACKEND, 100, 0, 2.0) is flow
    assert flow.peer == ("203.0.113.7", 4242)
    assert (machine.counters.relayed, machine.counters.reply_dropped) == (1, {})


def test_a_reply_counts_as_use_so_the_idle_timeout_spans_both_directions() -> None:
    machine = relaying(idle_timeout=5)
    flow = opened(machine, V4, v4("203.0.113.7", 4242), 100.0)
    machine.reply_received(flow, BACKEND, 10, 0, 104.0)  # the client went quiet; the backend did not
    assert machine.expire(106.0) == CloseFlows(())
    assert machine.expire(110.0) == CloseFlows((flow,))


def test_a_reply_keeps_its_flow_from_eviction_like_a_datagram_does() -> None:
    machine = relaying(max_flows=2)
    quiet_client = opened(machine, V4, v4("203.0.113.1", 1), 1.0)
    answered = opened(machine, V4, v4("203.0.113.2", 2), 2.0)
    machine.reply_received(answered, BACKEND, 10, 0, 3.0)
    action = machine.receive(V4, v4("203.0.113.3", 3), 10, 0, 4.0)
    assert isinstance(action, OpenFlow)
    assert machine.flow_opened(action.flow, handle()) == CloseFlows((quiet_client,))


def test_a_reply_arriving_on_the_socket_a_client_shares_goes_to_the_flow_of_its_source() -> None:
    # One client, two destinations: unconnected sockets bound to the same address and port may each
    # receive the other destination's reply.
    machine = relaying()
    client = v4("203.0.113.7", 4242)
    to_dns = opened(machine, V4, client, 1.0)
    to_game = opened(machine, OTHER, client, 1.0)
    assert machine.reply_received(to_dns, ("192.0.2.2", 27015), 10, 0, 2.0) is to_game


def test_a_reply_whose_flow_was_evicted_is_counted_unmatched_and_sent_nowhere() -> None:
    machine = relaying(max_flows=1)
    client = v4("203.0.113.7", 4242)
    to_dns = opened(machine, V4, client, 1.0)
    to_game = machine.receive(OTHER, client, 10, 0, 2.0)
    assert isinstance(to_game, OpenFlow)
    machine.flow_opened(to_game.flow, handle())  # evicts the flow to dns

    drop = machine.reply_received(to_game.flow, BACKEND, 10, 0, 3.0)  # dns answers on the shared port

    assert drop == Drop("reply-unmatched", OTHER, client, reply=True)
    assert (machine.counters.relayed, machine.counters.reply_dropped) == (0, {"reply-unmatched": 1})
    assert to_dns not in machine.flows.values()


def test_replies_still_queued_on_a_closed_flow_are_counted_unmatched() -> None:
    machine = relaying()
    flow = opened(machine, V4, v4("203.0.113.7", 4242), 1.0)
    machine.replies_unmatched(flow, 3)
    machine.replies_unmatched(flow, 0)
    assert machine.counters.reply_dropped == {"reply-unmatched": 3}


def test_a_truncated_reply_is_counted_never_relayed() -> None:
    machine = relaying()
    flow = opened(machine, V4, v4("203.0.113.7", 4242), 1.0)
    drop = machine.reply_received(flow, BACKEND, 70000, socket.MSG_TRUNC, 2.0)
    assert isinstance(drop, Drop)
    assert drop.key == "reply-truncated"
    assert machine.counters.relayed == 0


def test_a_reply_that_cannot_be_sent_is_taken_back_and_counted_by_errno() -> None:
    machine = relaying()
    flow = opened(machine, V4, v4("203.0.113.7", 4242), 1.0)
    machine.reply_received(flow, BACKEND, 10, 0, 2.0)
    assert machine.reply_send_failed(flow, errno.EAGAIN).key == "reply-send-error:EAGAIN"
    assert (machine.counters.relayed, machine.counters.reply_dropped) == (0, {"reply-send-error:EAGAIN": 1})


def test_in_direct_mode_a_datagram_arriving_on_a_flow_socket_is_counted_not_relayed() -> None:
    machine = ForwardingMachine()
    flow = opened(machine, V4, v4("203.0.113.7", 4242), 1.0)
    drop = machine.reply_received(flow, BACKEND, 10, 0, 2.0)
    assert isinstance(drop, Drop)
    assert drop.key == "reply-in-direct-mode"
    assert machine.counters.reply_dropped == {"reply-in-direct-mode": 1}


def test_the_local_address_a_client_sent_to_is_kept_and_follows_its_latest_datagram() -> None:
    machine = relaying()
    client = v4("203.0.113.7", 4242)
    first = machine.receive(V4, client, 10, 0, 1.0, local=b"\xc6\x33\x64\x01")
    assert isinstance(first, OpenFlow)
    assert first.flow.local_address == b"\xc6\x33\x64\x01"
    machine.flow_opened(first.flow, handle())
    machine.receive(V4, client, 10, 0, 2.0, local=b"\xc6\x33\x64\x02")
    assert first.flow.local_address == b"\xc6\x33\x64\x02"
    machine.receive(V4, client, 10, 0, 3.0)  # no pktinfo (a datagram queued before it was asked for)
    assert first.flow.local_address == b"\xc6\x33\x64\x02"


def test_icmp_errors_are_counted_by_the_name_of_their_type() -> None:
    machine = ForwardingMachine()
    flow = opened(machine, V4, v4("203.0.113.7", 4242), 1.0)
    unreachable = QueuedError(errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, 3, 3, "192.0.2.2")
    assert machine.icmp_error(flow, unreachable) == "backend-unreachable"
    machine.icmp_error(flow, unreachable)
    machine.icmp_error(flow, QueuedError(errno.EHOSTUNREACH, SO_EE_ORIGIN_ICMP, 11, 0, "192.0.2.1"))
    assert machine.counters.icmp_errors == {"backend-unreachable": 2, "time-exceeded": 1}
    assert machine.counters.forwarded == 1  # the datagrams left: an ICMP error never takes one back


@pytest.mark.parametrize("send_header", [False, True], ids=["transparent", "send-proxy-protocol"])
@pytest.mark.parametrize(
    ("path", "client"),
    [
        (V4, v4("192.0.2.2", 53)),
        (V4, v4("192.0.2.2", 27015)),
        (V6, v6("2001:db8:2::2", 53)),
        (V4, v6("::ffff:192.0.2.2", 53)),
    ],
    ids=["its-own", "another-destinations", "ipv6", "v4-mapped"],
)
def test_a_client_claiming_a_destinations_own_address_and_port_is_dropped_as_backend_source(
    path: Path, client: bytes, send_header: bool
) -> None:
    # Relayed, its replies would go to the backend, which answers a listener as that client: a loop.
    machine = ForwardingMachine(send_header=send_header, backends=[V4.target, V6.target, OTHER.target])
    assert machine.receive(path, client, 10, 0, 1.0) == Drop("backend-source", path, client)
    assert (machine.counters.forwarded, machine.counters.dropped) == (0, {"backend-source": 1})
    assert len(machine.flows) == 0


def test_a_client_on_the_backends_address_from_another_port_is_forwarded() -> None:
    machine = ForwardingMachine(backends=[V4.target])
    assert isinstance(machine.receive(V4, v4("192.0.2.2", 4242), 10, 0, 1.0), OpenFlow)
