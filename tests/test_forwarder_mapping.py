"""Which destination serves which socket: positional (in order), or named by FileDescriptorName=."""

import pytest

from forwarder.core.destination import DestinationSpec, parse_destination
from forwarder.errors import ConfigurationError, UsageError
from forwarder.service.mapping import assign


def specs(*texts: str) -> list[DestinationSpec]:
    return [parse_destination(text) for text in texts]


def hosts(assigned: list[DestinationSpec]) -> list[str]:
    return [spec.host for spec in assigned]


def test_positional_destinations_serve_the_sockets_in_order() -> None:
    assert hosts(assign(["unknown", "unknown"], specs("192.0.2.2", "192.0.2.3"))) == [
        "192.0.2.2",
        "192.0.2.3",
    ]


def test_named_destinations_are_matched_by_name_in_any_order() -> None:
    assigned = assign(["game", "dns"], specs("dns=192.0.2.3:53", "game=192.0.2.2"))
    assert hosts(assigned) == ["192.0.2.2", "192.0.2.3"]


def test_count_mismatch_of_positional_destinations_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="received 1 sockets but 2 destinations"):
        assign(["unknown"], specs("192.0.2.2", "192.0.2.3"))


def test_mixing_forms_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"'192\.0\.2\.2' has no NAME= but 'dns=192\.0\.2\.3' has"):
        assign(["a", "dns"], specs("192.0.2.2", "dns=192.0.2.3"))


def test_unknown_name_is_a_configuration_error_listing_the_names() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"no socket is named 'dsn': the sockets are named 'dns' \(FileDescriptorName=\)",
    ):
        assign(["dns"], specs("dsn=192.0.2.3"))


def test_a_name_given_twice_on_the_command_line_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="'dns' is given more than one destination"):
        assign(["dns", "game"], specs("dns=192.0.2.3", "dns=192.0.2.4"))


def test_named_mapping_with_two_sockets_of_the_same_name_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="'dns' is used by more than one socket"):
        assign(["dns", "dns"], specs("dns=192.0.2.3"))


def test_a_named_socket_without_destination_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="socket 'game' has no destination"):
        assign(["dns", "game"], specs("dns=192.0.2.3"))
