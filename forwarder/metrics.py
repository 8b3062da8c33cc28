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

from forwarder.core import Counters

PREFIX = "transparent_udp_forwarder"

log = logging.getLogger("forwarder")


def escape(value: str) -> str:
    """A label value as the exposition format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f'{name}="{escape(value)}"' for name, value in labels.items())


def exposition(
    forwarded: int, dropped: Mapping[str, int], flows: int, labels: Mapping[str, str] | None = None
) -> str:
    """The metrics in the Prometheus text format (version 0.0.4): totals since start, and open flows."""
    common = _labels(labels or {})

    def sample(name: str, value: int, extra: str = "") -> str:
        label_text = ",".join(part for part in (common, extra) if part)
        return f"{PREFIX}_{name}{{{label_text}}} {value}" if label_text else f"{PREFIX}_{name} {value}"

    lines = [
        f"# HELP {PREFIX}_datagrams_forwarded_total Datagrams forwarded since the forwarder started.",
        f"# TYPE {PREFIX}_datagrams_forwarded_total counter",
        sample("datagrams_forwarded_total", forwarded),
        f"# HELP {PREFIX}_datagrams_dropped_total Datagrams dropped since the forwarder started, by reason.",
        f"# TYPE {PREFIX}_datagrams_dropped_total counter",
        *(
            sample("datagrams_dropped_total", count, f'reason="{escape(reason)}"')
            for reason, count in sorted(dropped.items())
        ),
        f"# HELP {PREFIX}_flows Per-flow sockets open.",
        f"# TYPE {PREFIX}_flows gauge",
        sample("flows", flows),
    ]
    return "\n".join(lines) + "\n"


def listen_label(sockets: Sequence[socket.socket]) -> str:
    """The listening addresses, e.g. '[::]:27015,0.0.0.0:53': tells apart forwarders sharing a directory."""
    addresses = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        addresses.append(f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}")
    return ",".join(addresses)


class MetricsFile:
    """Writes the machine's counters (totals since start) to `path` when told; keeps no counts itself."""

    def __init__(self, path: Path, labels: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.labels = dict(labels or {})
        self._failing = False

    def write(self, counters: Counters, flows: int) -> None:
        """Rewrite the file with the totals since start (the current interval included) and open flows."""
        forwarded, dropped = counters.since_start()
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")  # not *.prom: never collected
        try:
            temporary.write_text(exposition(forwarded, dropped, flows, self.labels))
            os.replace(temporary, self.path)
        except OSError as error:
            if not self._failing:
                log.warning(
                    "cannot write metrics file %r: %s (retrying every interval)", str(self.path), error
                )
            self._failing = True
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            return
        if self._failing:
            log.warning("metrics file %r written again", str(self.path))
        self._failing = False
