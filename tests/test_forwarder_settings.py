"""The one Settings object: built once from the command line, frozen, and the facts every layer reads derived
from it in one place (forwarder.core.settings)."""

import dataclasses
import ipaddress
import socket

import pytest

from forwarder.core.addresses import sockaddr_bytes
from forwarder.core.machine import ForwardingMachine
from forwarder.core.settings import MAX_BATCH, RELAY_BATCH, Settings
from forwarder.service.options import build_parser, settings_from

DEST = ["192.0.2.2:53"]


def parsed(*options: str) -> Settings:
    """The settings the daemon builds from these options."""
    return settings_from(build_parser().parse_args([*options, *DEST]))


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.reply = "relay"  # type: ignore[misc]


def test_default_settings_are_the_command_lines_defaults() -> None:
    assert parsed() == Settings()


def test_every_option_reaches_its_field() -> None:
    settings = parsed(
        "--reply=relay",
        "--send-path=sockets",
        "--udp-checksum=compute",
        "--receive=single",
        "--max-flows=7",
        "--flow-idle-timeout=3",
        "--stats-interval=2",
        "--proxy-protocol-from=198.51.100.16/28",
        "--prefer-family=ipv6",
        "--receive-buffer=4096",
    )
    assert settings == Settings(
        reply="relay",
        send_path="sockets",
        udp_checksum="compute",
        receive="single",
        max_flows=7,
        flow_idle_timeout=3.0,
        stats_interval=2.0,
        proxy_protocol_from=(ipaddress.ip_network("198.51.100.16/28"),),
        prefer_family="ipv6",
        receive_buffer=4096,
    )
    assert settings.family == socket.AF_INET6
    assert settings.checksum
    assert parsed("--gso").gso
    assert parsed("--send-proxy-protocol").send_proxy_protocol


@pytest.mark.parametrize(
    ("options", "relays", "binds_client", "raw_path", "needs_capability"),
    [
        ((), False, True, True, False),  # direct, raw: the raw sockets exist, nothing else needs one
        (("--reply=relay",), True, True, True, True),  # relay: flow sockets bound to the client
        (("--send-path=sockets",), False, True, False, True),
        (("--send-path=raw",), False, True, True, False),
        (("--gso",), False, True, False, True),  # --gso sends from a flow's own socket
        (("--gso", "--reply=relay"), True, True, False, True),
        (("--send-proxy-protocol",), True, False, False, False),  # implies relay, binds nothing
        (("--send-proxy-protocol", "--reply=relay"), True, False, False, False),
        (("--send-proxy-protocol", "--send-path=sockets"), True, False, False, False),
    ],
)
def test_the_modes_derived_from_the_options(
    options: tuple[str, ...], relays: bool, binds_client: bool, raw_path: bool, needs_capability: bool
) -> None:
    settings = parsed(*options)
    assert settings.relays is relays
    assert settings.binds_client is binds_client
    assert settings.raw_path is raw_path
    assert settings.needs_capability_after_start is needs_capability
    assert settings.connects_flows is relays  # only flow sockets that carry replies are connected
    assert settings.prefixes_header is (not binds_client)
    assert settings.batch_budget == (RELAY_BATCH if relays else MAX_BATCH)


def test_send_proxy_protocol_implies_relay_and_needs_no_capability() -> None:
    settings = Settings(send_proxy_protocol=True)
    assert settings.relays
    assert not settings.binds_client
    assert not settings.needs_capability_after_start
    assert ForwardingMachine(settings).relay  # the machine relays replies too


def test_pktinfo_is_read_on_a_wildcard_listener_in_relay_mode_only() -> None:
    relay, direct = Settings(reply="relay"), Settings()
    assert relay.needs_pktinfo(wildcard=True)
    assert not relay.needs_pktinfo(wildcard=False)
    assert not direct.needs_pktinfo(wildcard=True)
    assert Settings(send_proxy_protocol=True).needs_pktinfo(wildcard=True)


def test_trusted_networks_become_a_judge_of_senders_and_none_without() -> None:
    assert Settings().trusted() is None
    judge = Settings(proxy_protocol_from=(ipaddress.ip_network("198.51.100.16/28"),)).trusted()
    assert judge is not None
    assert judge(sockaddr_bytes(socket.AF_INET, ("198.51.100.20", 40000)))
    assert not judge(sockaddr_bytes(socket.AF_INET, ("198.51.100.99", 40000)))


def test_the_machine_takes_its_limits_from_the_settings() -> None:
    machine = ForwardingMachine(Settings(max_flows=3, flow_idle_timeout=8.0))
    assert (machine.flows.capacity, machine.flows.idle_timeout) == (3, 8.0)
    assert machine.sweep_interval == 4.0
