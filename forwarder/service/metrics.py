"""Prometheus textfile output for node_exporter's textfile collector: the counters of STATUS= as metrics,
rewritten at every status interval. The file is written under a temporary name in the same directory and
renamed over the target, so the collector never reads half a file; a failed write is logged (once until it
works again) and never stops forwarding.
"""

import contextlib
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from forwarder.core.addresses import endpoint_text
from forwarder.core.counters import Counters, Totals

PREFIX = "transparent_udp_forwarder"

log = logging.getLogger("forwarder")


def escape(value: str) -> str:
    """A label value as the exposition format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f'{name}="{escape(value)}"' for name, value in labels.items())


def exposition(totals: Totals, flows: int, labels: Mapping[str, str] | None = None) -> str:
    """The metrics in the Prometheus text format (version 0.0.4): totals since start, and open flows.
    A family counted by reason (or type) has a sample per reason seen, none before the first."""
    common = _labels(labels or {})

    def sample(name: str, value: int, extra: str = "") -> str:
        label_text = ",".join(part for part in (common, extra) if part)
        return f"{PREFIX}_{name}{{{label_text}}} {value}" if label_text else f"{PREFIX}_{name} {value}"

    def family(name: str, kind: str, text: str) -> list[str]:
        return [f"# HELP {PREFIX}_{name} {text}", f"# TYPE {PREFIX}_{name} {kind}"]

    def by(name: str, label: str, counts: Mapping[str, int]) -> list[str]:
        return [sample(name, count, f'{label}="{escape(key)}"') for key, count in sorted(counts.items())]

    lines = [
        *family("datagrams_forwarded_total", "counter", "Datagrams forwarded since the forwarder started."),
        sample("datagrams_forwarded_total", totals.forwarded),
        *family(
            "datagrams_dropped_total", "counter", "Datagrams dropped since the forwarder started, by reason."
        ),
        *by("datagrams_dropped_total", "reason", totals.dropped),
        *family(
            "replies_relayed_total",
            "counter",
            "Backend replies relayed to clients since start.",
        ),
        sample("replies_relayed_total", totals.relayed),
        *family("replies_dropped_total", "counter", "Backend replies not relayed since start, by reason."),
        *by("replies_dropped_total", "reason", totals.reply_dropped),
        *family(
            "icmp_errors_total",
            "counter",
            "ICMP errors on the per-flow sockets since start, by type.",
        ),
        *by("icmp_errors_total", "type", totals.icmp_errors),
        *family("flows", "gauge", "Per-flow sockets open."),
        sample("flows", flows),
    ]
    if totals.ranges:  # one sample per port range listener, never one per port
        for name, index, text in (
            ("range_datagrams_received_total", 2, "Datagrams a port range's socket received in its range."),
            ("range_datagrams_outside_total", 3, "Datagrams a port range's socket received outside it."),
        ):
            lines += family(name, "counter", text)
            lines += [
                sample(name, int(item[index]), f'socket="{escape(item[0])}",range="{item[1]}"')
                for item in totals.ranges
            ]
    return "\n".join(lines) + "\n"


def listen_label(sockets: Sequence[socket.socket]) -> str:
    """The listening addresses, e.g. '[::]:27015,0.0.0.0:53': tells apart forwarders sharing a directory."""
    return ",".join(endpoint_text(sock.getsockname()) for sock in sockets)


class MetricsFile:
    """Writes the machine's counters (totals since start) to `path` when told; keeps no counts itself."""

    def __init__(self, path: Path, labels: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.labels = dict(labels or {})
        self._failing = False

    @property
    def temporary(self) -> Path:
        """The name written first and renamed over the file: not *.prom, so never collected half-written."""
        return self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

    def check(self) -> None:
        """Create and remove the temporary file once, at start-up: a name too long for it (ENAMETOOLONG), a
        missing or read-only directory fail here, not silently at every interval. Raises OSError."""
        temporary = self.temporary
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        temporary.unlink()

    def write(self, counters: Counters, flows: int) -> bool:
        """Rewrite the file with the totals since start (the current interval included) and open flows;
        False when that failed (logged once until a write works again)."""
        totals = counters.since_start()
        temporary = self.temporary
        try:
            # A fresh file of our own: whatever sits at the temporary name (a symlink someone planted, a
            # FIFO that would block the loop until a reader came) is removed, never followed or opened.
            temporary.unlink(missing_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with open(os.open(temporary, flags, 0o644), "w") as file:
                file.write(exposition(totals, flows, self.labels))
            os.replace(temporary, self.path)
        except OSError as error:
            if not self._failing:
                log.warning(
                    "cannot write metrics file %r: %s (retrying every interval)", str(self.path), error
                )
            self._failing = True
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            return False
        if self._failing:
            log.warning("metrics file %r written again", str(self.path))
        self._failing = False
        return True
