"""The one home of nftables in a node: load a ruleset (`nft -f`, the file kept in the lab's workdir for the
failure report), delete a table, and read counters (a named counter, or the counters of rules carrying a
comment) from `nft -j`."""

import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netlab.errors import ProcessFailedError

if TYPE_CHECKING:
    from netlab.lab.node import LabNode


def apply_ruleset(node: "LabNode", ruleset: str, label: str = "rules") -> Path:
    """Load `ruleset` (dedented) into `node` with `nft -f`; return the file it was written to."""
    path = node.lab.workdir / f"{node.name}-{label}-{node.lab.next_serial()}.nft"
    path.write_text(textwrap.dedent(ruleset))
    node.check(["nft", "-f", str(path)], label="nft")
    return path


def delete_table(node: "LabNode", family: str, table: str) -> None:
    """Remove table `family table` (e.g. 'inet', 'netlab_sink') from `node`."""
    node.check(["nft", "delete", "table", family, table], label="nft")


def _listing(node: "LabNode", argv: list[str]) -> list[dict[str, Any]]:
    output = node.check(["nft", "-j", *argv], label="nft")
    try:
        return list(json.loads(output)["nftables"])
    except (ValueError, KeyError, TypeError):
        raise ProcessFailedError(
            f"nft -j {' '.join(argv)} in {node.name!r}: not nft JSON: {output!r}"
        ) from None


def counter_packets(node: "LabNode", family: str, table: str, counter: str) -> int:
    """The packets of the named counter `counter` of table `family table` in `node`."""
    return counter_values(node, family, table, counter)[0]


def counter_values(node: "LabNode", family: str, table: str, counter: str) -> tuple[int, int]:
    """(packets, bytes) of the named counter `counter` of table `family table` in `node`.

    A counter counts socket buffers: a GSO super-packet that crossed a veth unsegmented is one packet
    however many datagrams it carries, while its bytes are those of all of them (one set of headers)."""
    for item in _listing(node, ["list", "counter", family, table, counter]):
        if "counter" in item:
            return int(item["counter"]["packets"]), int(item["counter"]["bytes"])
    raise ProcessFailedError(f"no counter {counter!r} in table {family} {table} of {node.name!r}")


def rule_packets(node: "LabNode", family: str, table: str, comment: str) -> int:
    """The packets counted by the rules of `family table` whose comment is `comment`, added up."""
    total = 0
    for item in _listing(node, ["list", "table", family, table]):
        rule = item.get("rule")
        if rule and rule.get("comment") == comment:
            total += sum(int(e["counter"]["packets"]) for e in rule["expr"] if "counter" in e)
    return total
