"""Relay mode's one tproxy reply socket (--reply-tproxy) without the lab: the option and what it refuses,
the modes it decides, the machine matching a steered reply to its flow by (backend, client), the reply
batch's control messages, and the reply socket's family. The lab tests are tests/test_e2e_relay_tproxy.py.
"""

import errno
import socket
from pathlib import Path as FilePath

import pytest
from test_forwarder_machine import V4, V6, v4, v6

from forwarder.core.actions import Drop, OpenFlow
from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.destination import Destination
from forwarder.core.flows import Flow, Path
from forwarder.core.machine import ForwardingMachine
from forwarder.core.reply_rules import STEERED_KEYS_PER_FLOW
from forwarder.core.settings import Settings
from forwarder.errors import MissingPermissionError
from forwarder.io.control import origdst_in_control, pktinfo_in_control
from forwarder.io.linux import IP_PKTINFO
from forwarder.io.replies import ReplyBatch, source_control
from forwarder.io.reply_socket import ORIGDST_SPACE, reply_socket_family
from forwarder.service import cli
from forwarder.service.options import build_parser, settings_from
from netlab.service.relay import relay_tproxy_commands

DEST = "192.0.2.2:53"
IP_RECVTTL = 12  # not in the socket module
BACKEND4 = v4("192.0.2.2", 53)
MAPPED_BACKEND4 = v6("::ffff:192.0.2.2", 53)  # an IPv4 reply's source on a dual-stack reply socket
BACKEND6 = v6("2001:db8:2::2", 53)
CLIENT = v4("203.0.113.7", 4242)


def steering(**options: object) -> ForwardingMachine:
    """A relaying machine whose replies come to the reply socket."""
    return ForwardingMachine(Settings(reply="relay", reply_tproxy=27999, **options))  # type: ignore[arg-type]


def opened(machine: ForwardingMachine, path: Path, client: bytes, now: float = 1.0) -> Flow:
    action = machine.receive(path, client, 10, 0, now)
    assert isinstance(action, OpenFlow)
    machine.flow_opened(action.flow, None)  # the raw send path with a reply socket: no flow socket
    return action.flow


# --- the option -------------------------------------------------------------------------------------------


def test_reply_tproxy_reaches_its_setting_and_leaves_flows_without_sockets() -> None:
    settings = settings_from(build_parser().parse_args(["--reply", "relay", "--reply-tproxy", "27999", DEST]))
    assert settings.reply_tproxy == 27999
    assert settings.relays
    assert not settings.replies_on_flow_sockets
    assert not settings.flow_sockets  # the raw path sends, the reply socket receives
    assert not settings.connects_flows
    assert not settings.needs_capability_after_start  # the reply socket is opened at start-up


def test_without_reply_tproxy_relay_mode_keeps_a_socket_per_flow() -> None:
    settings = Settings(reply="relay")
    assert (settings.replies_on_flow_sockets, settings.flow_sockets) == (True, True)
    assert settings.needs_capability_after_start


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--reply-tproxy", "27999"], "--reply-tproxy 27999 without --reply relay"),
        (["--reply", "direct", "--reply-tproxy", "27999"], "--reply-tproxy 27999 without --reply relay"),
        (["--reply-tproxy", "27999", "--send-proxy-protocol"], "--reply-tproxy with --send-proxy-protocol"),
        (["--reply", "relay", "--reply-tproxy", "27999", "--gso"], "--reply-tproxy with --gso"),
        (
            ["--reply", "relay", "--reply-tproxy", "27999", "--send-path", "sockets"],
            "--reply-tproxy with --send-path sockets",
        ),
        (["--reply", "relay", "--reply-tproxy", "0"], "--reply-tproxy: '0' is out of range"),
        (["--reply", "relay", "--reply-tproxy", "65536"], "--reply-tproxy: '65536' is out of range"),
        (["--reply", "relay", "--reply-tproxy", "x"], "--reply-tproxy: 'x' is not a number"),
    ],
    ids=["no-reply", "direct", "send-proxy-protocol", "gso", "sockets", "zero", "too-large", "not-a-number"],
)
def test_reply_tproxy_outside_relay_mode_on_the_raw_path_is_a_usage_error_naming_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], options: list[str], expected: str
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert cli.main([*options, DEST]) == 64
    assert expected in capsys.readouterr().err


# --- the machine: whose reply is it? ----------------------------------------------------------------------


def test_a_steered_reply_goes_to_the_flow_of_its_backend_and_client_and_counts_as_use() -> None:
    machine = steering()
    flow = opened(machine, V4, CLIENT)
    assert machine.reply_arrived(BACKEND4, CLIENT, 100, 0, 5.0) is flow
    assert flow.last_used == 5.0
    assert (machine.counters.relayed, machine.counters.reply_dropped) == (1, {})


def test_an_ipv4_reply_on_a_dual_stack_reply_socket_finds_its_flow_by_its_v4_mapped_source() -> None:
    machine = steering()
    four = opened(machine, V4, CLIENT)
    six = opened(machine, V6, v6("2001:db8:1::10", 4242))
    assert machine.reply_arrived(MAPPED_BACKEND4, CLIENT, 10, 0, 2.0) is four
    assert machine.reply_arrived(BACKEND6, v6("2001:db8:1::10", 4242), 10, 0, 2.0) is six


def test_a_v4_mapped_client_of_a_dual_stack_listener_gets_the_steered_reply_of_its_ipv4_flow() -> None:
    dual = Path("dual", Destination(socket.AF_INET, "192.0.2.2", 53))
    machine = steering()
    flow = opened(machine, dual, v6("::ffff:203.0.113.7", 4242))
    assert machine.reply_arrived(BACKEND4, CLIENT, 10, 0, 2.0) is flow  # IP_ORIGDSTADDR is a sockaddr_in
    assert flow.peer == ("::ffff:203.0.113.7", 4242, 0, 0)  # relayed to it as it sent


def test_one_client_of_two_backends_gets_each_backends_reply_on_its_own_flow() -> None:
    other = Path("game", Destination(socket.AF_INET, "192.0.2.2", 27015))
    machine = steering()
    to_dns, to_game = opened(machine, V4, CLIENT), opened(machine, other, CLIENT)
    assert machine.reply_arrived(v4("192.0.2.2", 27015), CLIENT, 10, 0, 2.0) is to_game
    assert machine.reply_arrived(BACKEND4, CLIENT, 10, 0, 2.0) is to_dns


def test_a_steered_reply_whose_flow_was_evicted_is_counted_unmatched_and_sent_nowhere() -> None:
    machine = steering(max_flows=1)
    opened(machine, V4, CLIENT)
    opened(machine, V4, v4("203.0.113.8", 1))  # evicts the first
    assert machine.reply_arrived(BACKEND4, CLIENT, 10, 0, 2.0) == Drop(
        "reply-unmatched", None, CLIENT, reply=True
    )
    assert (machine.counters.relayed, machine.counters.reply_dropped) == (0, {"reply-unmatched": 1})


@pytest.mark.parametrize(
    ("source", "client"),
    [
        (v4("192.0.2.9", 53), CLIENT),  # none of our backends
        (v4("192.0.2.2", 54), CLIENT),  # our backend's address, another port
        (BACKEND4, None),  # no original destination: not steered by a tproxy rule
        (BACKEND4, b""),  # the control messages were cut short: the client is unknown
    ],
    ids=["other-host", "other-port", "no-origdst", "truncated-control"],
)
def test_a_reply_from_no_backend_of_ours_or_without_its_client_is_counted_unmatched(
    source: bytes, client: bytes | None
) -> None:
    machine = steering()
    opened(machine, V4, CLIENT)
    assert machine.reply_arrived(source, client, 10, 0, 2.0) == Drop(
        "reply-unmatched", None, client or None, reply=True
    )
    assert (machine.counters.relayed, machine.counters.reply_dropped) == (0, {"reply-unmatched": 1})


def test_a_truncated_steered_reply_is_counted_never_relayed() -> None:
    machine = steering()
    opened(machine, V4, CLIENT)
    drop = machine.reply_arrived(BACKEND4, CLIENT, 70000, socket.MSG_TRUNC, 2.0)
    assert drop == Drop("reply-truncated", V4, CLIENT, reply=True)
    assert machine.counters.relayed == 0


def test_a_steered_replys_flow_is_found_by_the_key_it_was_learned_under_and_counts_as_use() -> None:
    # The engine names a reply by its key (the bytes it read the source and client from); a relayed
    # reply teaches the machine that key, and a batch of keys is matched at once from then on.
    machine = steering()
    flow = opened(machine, V4, CLIENT)
    assert machine.steered_flows([b"key-1"], 2.0) == ([None], 0)  # not learned yet: reply_arrived decides
    assert machine.reply_arrived(BACKEND4, CLIENT, 10, 0, 2.0, key=b"key-1") is flow

    assert machine.steered_flows([b"key-1", b"key-2", b"key-1"], 5.0) == ([flow, None, flow], 2)
    assert flow.last_used == 5.0
    assert (machine.counters.relayed, machine.counters.reply_dropped) == (3, {})


def test_a_key_is_forgotten_with_its_flow_so_a_late_reply_never_reaches_the_clients_next_flow() -> None:
    machine = steering(max_flows=1)
    first = opened(machine, V4, CLIENT)
    assert machine.reply_arrived(BACKEND4, CLIENT, 10, 0, 2.0, key=b"key") is first
    opened(machine, V4, v4("203.0.113.8", 1))  # evicts the first flow
    assert machine.steered_flows([b"key"], 3.0) == ([None], 0)
    assert machine.reply_arrived(BACKEND4, CLIENT, 10, 0, 3.0, key=b"key") == Drop(
        "reply-unmatched", None, CLIENT, reply=True
    )

    again = opened(machine, V4, CLIENT, 4.0)  # the client comes back: a new flow, learned anew
    assert machine.steered_flows([b"key"], 5.0) == ([None], 0)
    assert machine.reply_arrived(BACKEND4, CLIENT, 10, 0, 5.0, key=b"key") is again
    assert machine.steered_flows([b"key"], 6.0) == ([again], 1)


def test_a_dropped_reply_teaches_no_key_and_a_flow_keeps_a_few_at_most() -> None:
    machine = steering()
    flow = opened(machine, V4, CLIENT)
    machine.reply_arrived(BACKEND4, CLIENT, 70000, socket.MSG_TRUNC, 2.0, key=b"truncated")
    machine.reply_arrived(v4("192.0.2.9", 53), CLIENT, 10, 0, 2.0, key=b"stranger")
    assert machine.steered_flows([b"truncated", b"stranger"], 3.0) == ([None, None], 0)

    keys = [b"key-%d" % serial for serial in range(STEERED_KEYS_PER_FLOW + 2)]
    for key in keys:
        assert machine.reply_arrived(BACKEND4, CLIENT, 10, 0, 3.0, key=key) is flow
    flows, found = machine.steered_flows(keys, 4.0)
    assert found == STEERED_KEYS_PER_FLOW
    assert flows[:STEERED_KEYS_PER_FLOW] == [flow] * STEERED_KEYS_PER_FLOW


def test_a_failed_read_of_the_reply_socket_is_counted_by_errno() -> None:
    machine = steering()
    assert machine.steered_receive_failed(12) == Drop("reply-receive-error:ENOMEM", None, None, reply=True)
    assert machine.counters.reply_dropped == {"reply-receive-error:ENOMEM": 1}


# --- I/O pieces that need no privilege ---------------------------------------------------------------------


def test_the_reply_socket_is_ipv4_for_ipv4_backends_and_dual_stack_otherwise() -> None:
    assert reply_socket_family([socket.AF_INET]) == socket.AF_INET
    assert reply_socket_family([socket.AF_INET6]) == socket.AF_INET6
    assert reply_socket_family([socket.AF_INET, socket.AF_INET6]) == socket.AF_INET6


def test_the_reply_batch_receives_each_replys_control_messages_batch_after_batch() -> None:
    # IP_PKTINFO stands in for IP_ORIGDSTADDR (which needs a tproxy rule): the arena, the lengths restored
    # before each receive and the walk are the same. The second batch must see whole control buffers again.
    batch = ReplyBatch.create(capacity=4, buffer_size=256, control_space=ORIGDST_SPACE)
    if batch is None:
        pytest.skip("this libc has no recvmmsg/sendmmsg")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        for batch_number in range(2):
            if batch_number:  # more control messages than the first batch had: the room must be whole again
                receiver.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
            for serial in range(3):
                sender.sendto(b"%d-%d" % (batch_number, serial), receiver.getsockname())
            assert batch.receive(receiver.fileno(), 0, 4) == 3
            for index in range(3):
                control = batch.control(index)
                assert len(control) == socket.CMSG_SPACE(12) + batch_number * socket.CMSG_SPACE(4)
                assert not batch.received(index)[2] & socket.MSG_CTRUNC
                assert bytes(batch.payload(index)) == b"%d-%d" % (batch_number, index)
                assert pktinfo_in_control(control, socket.AF_INET) == socket.inet_aton("127.0.0.1")
                assert origdst_in_control(control) is None  # a pktinfo message is no original destination


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    sender.bind(("127.0.0.1", 0))
    return receiver, sender


def reply_batch(**options: int) -> ReplyBatch:
    batch = ReplyBatch.create(
        **{"capacity": 4, "buffer_size": 256, "control_space": ORIGDST_SPACE, **options}
    )
    if batch is None:
        pytest.skip("this libc has no recvmmsg/sendmmsg")
    return batch


def test_a_slots_key_names_its_source_and_control_messages_whatever_the_slot_held_before() -> None:
    # IP_PKTINFO stands in for IP_ORIGDSTADDR. The key must be the same for the same source and control
    # messages: a longer control chain in the slot before (TTL too) must leave nothing behind in it.
    batch, fresh = reply_batch(), reply_batch()
    receiver, sender = loopback_pair()
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender, other:
        receiver.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        receiver.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        for _ in range(2):
            sender.sendto(b"ttl", receiver.getsockname())
        assert batch.receive(receiver.fileno(), 0, 4) == 2
        receiver.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 0)
        for peer in (sender, sender, other, sender):
            peer.sendto(b"plain", receiver.getsockname())
        assert batch.receive(receiver.fileno(), 0, 2) == 2
        assert fresh.receive(receiver.fileno(), 0, 4) == 2

        keys = batch.keys(0, 2) + fresh.keys(0, 2)
        assert keys[0] == keys[1] == keys[3] == batch.key(0)
        assert keys[2] != keys[0]  # another source
        assert keys[0][: len(batch.received(0)[0])] == batch.received(0)[0]


def test_a_run_of_replies_leaves_each_to_its_own_name_with_its_own_source() -> None:
    batch = reply_batch()
    receiver, sender = loopback_pair()
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    with receiver, sender, clients[0], clients[1], clients[2]:
        for client in clients:
            client.bind(("127.0.0.1", 0))
            client.settimeout(5)
        for serial, size in enumerate((3, 40, 7)):
            sender.sendto(bytes([65 + serial]) * size, receiver.getsockname())
        assert batch.receive(receiver.fileno(), 0, 4) == 3
        assert not batch.flagged(0, 3)
        names = b"".join(sockaddr_bytes(socket.AF_INET, client.getsockname()) for client in clients)
        controls = source_control(socket.AF_INET, socket.inet_aton("127.0.0.1")) * 3

        batch.stage_run(0, 3, names, controls)
        assert batch.send(sender.fileno(), 0, 3) == (3, 0)
        for serial, (client, size) in enumerate(zip(clients, (3, 40, 7), strict=True)):
            assert client.recvfrom(100) == (bytes([65 + serial]) * size, sender.getsockname())

        # A message staged one by one after a run goes to its own name again, without a source control.
        batch.stage(1, 1, sockaddr_bytes(socket.AF_INET, clients[2].getsockname()), b"")
        assert batch.send(sender.fileno(), 1, 1) == (1, 0)
        assert clients[2].recvfrom(100) == (b"B" * 40, sender.getsockname())

        # And a run of the first one's shape after it writes its own names and sources again.
        batch.stage_run(0, 3, names[16:] + names[:16], controls)
        assert batch.send(sender.fileno(), 0, 3) == (3, 0)
        for serial, size in enumerate((3, 40, 7)):
            client = clients[(serial + 1) % 3]
            assert client.recvfrom(100) == (bytes([65 + serial]) * size, sender.getsockname())


def test_a_truncated_reply_flags_its_batch() -> None:
    batch = reply_batch(buffer_size=16)
    receiver, sender = loopback_pair()
    with receiver, sender:
        sender.sendto(b"fits", receiver.getsockname())
        sender.sendto(b"x" * 17, receiver.getsockname())
        assert batch.receive(receiver.fileno(), 0, 4) == 2
        assert not batch.flagged(0, 1)
        assert batch.flagged(0, 2)
        assert batch.flagged(1, 1)


def test_the_readmes_reply_socket_recipe_is_what_the_lab_steers_with() -> None:
    readme = (FilePath(__file__).resolve().parent.parent / "README.md").read_text()
    for backend in ("192.0.2.2", "2001:db8:2::2"):
        commands = relay_tproxy_commands(backend, 5353, 5399, interface="eth1")
        assert "fib daddr type != local" in commands[2]  # the host's own clients keep their answers
        assert "\n".join(commands) + "\n" in readme


def test_without_cap_net_raw_reply_tproxy_fails_with_77_instead_of_falling_back_to_flow_sockets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Per-client sockets would be the fall-back of the raw path; --reply-tproxy replaces them, so it is
    # refused with what to grant, even where CAP_NET_ADMIN would allow the fall-back.
    def refused(family: socket.AddressFamily) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(cli, "open_raw_socket", refused)
    monkeypatch.setattr(cli, "check_transparent_capability", lambda families: None)  # CAP_NET_ADMIN held
    settings = Settings(reply="relay", reply_tproxy=27999)
    with pytest.raises(MissingPermissionError, match=r"--reply-tproxy needs the raw send path") as raised:
        cli.open_send_path(settings, {socket.AF_INET})
    assert raised.value.exit_code == 77
