"""The `proxy_header` table of a scenario's [[traffic]] and [[expect.arrives]]: a PROXY protocol v2 header
put in front of the payload, written as what it says (and, for the drop reasons, what is wrong with it)
rather than as hex.

    proxy_header = { src = "203.0.113.7:4242", dst = "198.51.100.1:27000" }   # PROXY, DGRAM
    proxy_header = { command = "local" }                                       # LOCAL: no client behind
    # one field overridden, to make a bad header: version, command (a number), family, transport (the
    # nibbles of bytes 13 and 14), length (the declared length), tlvs_hex (TLVs inside the declared length,
    # the length grown to hold them), cut (keep only the first N bytes of the header)
    proxy_header = { src = "...", dst = "...", transport = 1 }
"""

from collections.abc import Mapping
from typing import Any

from forwarder.core.proxy_protocol import build, build_local
from netlab.scenario.reader import Reader, address_port

_KEYS = {"src", "dst", "command", "version", "family", "transport", "length", "tlvs_hex", "cut"}


def proxy_header(reader: Reader, table: Mapping[str, Any], element: str) -> bytes:
    """The header bytes a `proxy_header` table describes; ScenarioError naming the bad field otherwise."""
    where = f"{element}.proxy_header"
    reader.keys(table, _KEYS, where)
    command = table.get("command", "proxy")
    if command not in ("proxy", "local") and (isinstance(command, bool) or not isinstance(command, int)):
        raise reader.fail(f"{where}.command", f'{command!r}: expected "proxy", "local" or a number 0 to 15')
    if command == "local":
        header = bytearray(build_local())
    else:
        if "src" not in table or "dst" not in table:
            raise reader.fail(where, 'needs src = "ADDR:PORT" and dst = "ADDR:PORT" (or command = "local")')
        src = address_port(reader, reader.get(table, "src", str, where), f"{where}.src")
        dst = address_port(reader, reader.get(table, "dst", str, where), f"{where}.dst")
        try:
            header = bytearray(build(src, dst))
        except ValueError as error:
            raise reader.fail(where, str(error)) from None
    tlvs_hex = reader.get(table, "tlvs_hex", str, where, "")
    try:
        tlvs = bytes.fromhex(tlvs_hex)
    except ValueError:
        raise reader.fail(f"{where}.tlvs_hex", f"bad hex {tlvs_hex!r}") from None
    header += tlvs
    header[14:16] = (int.from_bytes(header[14:16], "big") + len(tlvs)).to_bytes(2, "big")
    if isinstance(command, int):
        header[12] = (header[12] & 0xF0) | _nibble(reader, command, f"{where}.command")
    for key, byte, shift in (("version", 12, 4), ("family", 13, 4), ("transport", 13, 0)):
        if key in table:
            value = _nibble(reader, reader.get(table, key, int, where), f"{where}.{key}")
            mask = 0x0F if shift else 0xF0
            header[byte] = (header[byte] & mask) | (value << shift)
    if "length" in table:
        length = reader.get(table, "length", int, where)
        if not 0 <= length <= 0xFFFF:
            raise reader.fail(f"{where}.length", f"{length!r}: expected 0 to 65535")
        header[14:16] = length.to_bytes(2, "big")
    cut = reader.get(table, "cut", int, where, len(header))
    if not 0 <= cut <= len(header):
        raise reader.fail(f"{where}.cut", f"{cut!r}: expected 0 to the header's {len(header)} bytes")
    return bytes(header[:cut])


def _nibble(reader: Reader, value: int, element: str) -> int:
    if not 0 <= value <= 15:
        raise reader.fail(element, f"{value!r}: expected 0 to 15 (a nibble)")
    return value
