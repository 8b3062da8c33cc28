"""The one reader of the forwarder's STATUS= line, for the benchmark, the scenarios and the tests:

12 datagrams forwarded in the last 10 seconds, 2 dropped (family-mismatch 1, send-error:ENETUNREACH 1);
since start 40 forwarded, 3 dropped; 5 flows.
"""

import collections
import re

_TOTALS = re.compile(r"since start (\d+) forwarded, (\d+) dropped")
_DROPS = re.compile(r"dropped \(([^)]*)\)")
_FLOWS = re.compile(r"; (\d+) flows")


def status_totals(status: str) -> tuple[int, int] | None:
    """(forwarded, dropped) since start, from one periodic STATUS= line; None for another kind."""
    match = _TOTALS.search(status)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def interval_drops(status: str) -> collections.Counter[str]:
    """The drops of one line's interval by reason: {'family-mismatch': 1, 'send-error:ENETUNREACH': 1}."""
    drops: collections.Counter[str] = collections.Counter()
    match = _DROPS.search(status)
    if match:
        for item in match.group(1).split(", "):
            reason, _, count = item.rpartition(" ")
            drops[reason] += int(count)
    return drops


def drops_by_reason(statuses: list[str]) -> collections.Counter[str]:
    """The drops of every interval added up by reason (each STATUS= line counts its own interval)."""
    total: collections.Counter[str] = collections.Counter()
    for status in statuses:
        total += interval_drops(status)
    return total


def open_flows(status: str) -> int:
    """The flow count at the end of the line ('...; N flows.'), 0 when absent."""
    match = _FLOWS.search(status)
    return int(match[1]) if match else 0
