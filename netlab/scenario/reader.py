"""Typed access to the tables of a scenario file, with errors naming the file, the element and the value."""

from collections.abc import Mapping
from typing import Any

from netlab.addresses import parse_endpoint
from netlab.errors import AddressError, ScenarioError
from netlab.scenario.model import Endpoint
from netlab.topology.model import Topology


class Reader:
    """Typed access to TOML tables with errors naming the file, the element and the value."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, element: str, message: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {element}: {message}")

    def keys(self, table: Mapping[str, Any], allowed: set[str], element: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(element, f"unknown key {key!r}; expected one of {sorted(allowed)}")

    def get(
        self,
        table: Mapping[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        element: str,
        default: Any = None,
    ) -> Any:
        if key not in table:
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            value = None  # TOML true is not an integer
        if not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(f"{element}.{key}", f"expected {names}, got {table[key]!r}")
        return value

    def strings(self, table: Mapping[str, Any], key: str, element: str, default: Any = None) -> Any:
        values = self.get(table, key, list, element, default)
        if values is not None and not all(isinstance(value, str) for value in values):
            raise self.fail(f"{element}.{key}", f"expected a list of strings, got {values!r}")
        return values

    def table(self, data: Mapping[str, Any], key: str, element: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.get(data, key, dict, element)
        return value

    def tables(self, data: Mapping[str, Any], key: str, element: str) -> list[tuple[str, dict[str, Any]]]:
        items = self.get(data, key, list, element, [])
        result = []
        for index, item in enumerate(items):
            where = f"{key}[{index}]"
            if not isinstance(item, dict):
                raise self.fail(where, f"expected a table, got {item!r}")
            result.append((where, item))
        return result

    def node(
        self, table: Mapping[str, Any], key: str, element: str, topology: Topology, default: str | None = None
    ) -> str:
        name = self.get(table, key, str, element, default)
        if name is None:
            raise self.fail(
                element, f"missing {key!r}: expected a node name, one of {sorted(topology.nodes)}"
            )
        if name not in topology.nodes:
            raise self.fail(
                f"{element}.{key}", f"unknown node {name!r}; known nodes: {sorted(topology.nodes)}"
            )
        return str(name)

    def endpoint(self, text: Any, element: str, topology: Topology) -> Endpoint:
        node, _, port = str(text).rpartition(":")
        if not isinstance(text, str) or not port.isdigit() or not 0 < int(port) < 65536:
            raise self.fail(element, f"bad endpoint {text!r}: expected NODE:PORT, e.g. 'backend:27000'")
        if node not in topology.nodes:
            raise self.fail(
                element, f"unknown node {node!r} in {text!r}; known nodes: {sorted(topology.nodes)}"
            )
        return Endpoint(node, int(port))

    def payload(self, table: Mapping[str, Any], element: str, limit: int) -> tuple[bytes | None, int | None]:
        given = [key for key in ("payload", "payload_hex", "size") if key in table]
        if len(given) > 1:
            raise self.fail(element, f"give one of payload, payload_hex or size, not {given}")
        if "payload" in table:
            return self.get(table, "payload", str, element).encode(), None
        if "payload_hex" in table:
            text = self.get(table, "payload_hex", str, element)
            try:
                return bytes.fromhex(text), None
            except ValueError:
                raise self.fail(f"{element}.payload_hex", f"bad hex {text!r}") from None
        size = self.get(table, "size", int, element)
        if size is not None and not 0 <= size <= limit:
            raise self.fail(f"{element}.size", f"{size!r} must be 0 to {limit}")
        return None, size

    def positive(self, table: Mapping[str, Any], key: str, element: str, default: int | float) -> Any:
        kind: tuple[type, ...] = (int,) if isinstance(default, int) else (int, float)
        value = self.get(table, key, kind, element, default)
        if not value > 0:
            raise self.fail(f"{element}.{key}", f"{value!r} must be greater than 0")
        return value


def address_port(reader: Reader, text: Any, element: str) -> tuple[str, int]:
    """ADDRESS:PORT (netlab.addresses) with the error naming the file and the element."""
    try:
        return parse_endpoint(text)
    except AddressError as error:
        raise reader.fail(element, str(error)) from None
