"""Typed access to the tables of a scenario file, with errors naming the file, the line, the element and the
value. tomllib keeps no positions, so the lines come from an index of the file's table headers and keys."""

import re
from collections.abc import Mapping
from typing import Any

from netlab.addresses import parse_endpoint
from netlab.errors import AddressError, ScenarioError
from netlab.scenario.model import Endpoint
from netlab.topology.model import Topology

_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_PART = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_KEY = re.compile(rf"\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")
_INDEX = re.compile(r"\[\d+\]$")


def _dotted(key: str) -> str:
    """A TOML key as the element paths write it: parts joined by dots, quotes and spaces dropped."""
    parts = re.findall(_KEY_PART, key)
    return ".".join(part.strip("\"'") for part in parts)


def line_index(text: str) -> dict[str, int]:
    """Element path (`traffic[1].from`, `forwarder`, `expect.arrives[0]`) -> the line (from 1) that
    starts it: each table header and each key, outside multi-line strings."""
    index: dict[str, int] = {}
    counts: dict[str, int] = {}
    table = ""
    in_string = ""
    for number, line in enumerate(text.splitlines(), 1):
        if in_string:
            if line.count(in_string) % 2:
                in_string = ""
            continue
        header = _HEADER.match(line)
        if header:
            name = _dotted(header.group(2))
            if header.group(1) == "[[":
                counts[name] = counts.get(name, 0) + 1
                name = f"{name}[{counts[name] - 1}]"
            else:
                for array, count in counts.items():  # [traffic.x] after [[traffic]]: the last one's
                    if name.startswith(array + "."):
                        name = f"{array}[{count - 1}]{name[len(array) :]}"
            table = name
            index.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            path = _dotted(key.group(1))
            index.setdefault(f"{table}.{path}" if table else path, number)
            rest = line[key.end() :]
            for quotes in ('"""', "'''"):
                if rest.count(quotes) % 2:
                    in_string = quotes
    return index


class Reader:
    """Typed access to TOML tables with errors naming the file, the line, the element and the value."""

    def __init__(self, source: str, text: str = "") -> None:
        self.source = source
        self.lines = line_index(text)

    def line(self, element: str) -> int | None:
        """The line of `element`, else of the closest enclosing element the file writes out."""
        path = "" if element == "top level" else element
        while path:
            if path in self.lines:
                return self.lines[path]
            trimmed = _INDEX.sub("", path)
            path = trimmed if trimmed != path else path.rpartition(".")[0]
        return None

    def fail(self, element: str, message: str, at: str | None = None) -> ScenarioError:
        """The error for `element`, located at the line of `at` (default: the element's own)."""
        line = self.line(at or element)
        where = f"{self.source}:{line}" if line is not None else self.source
        return ScenarioError(f"{where}: {element}: {message}")

    def keys(self, table: Mapping[str, Any], allowed: set[str], element: str) -> None:
        for key in table:
            if key not in allowed:
                at = key if element == "top level" else f"{element}.{key}"
                raise self.fail(element, f"unknown key {key!r}; expected one of {sorted(allowed)}", at)

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
