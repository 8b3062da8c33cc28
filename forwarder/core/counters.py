"""What the forwarder counts: drop reasons, this interval's counts and the totals since start (the one home of
the numbers STATUS= and the metrics file show).
"""

import enum
import errno
from collections import Counter
from dataclasses import dataclass, field

from forwarder.core.ranges import RangeCounts


class DropReason(enum.Enum):
    """Why a datagram was not forwarded, or a reply not relayed; the value is the word used in STATUS=,
    the metrics file and logs."""

    TRUNCATED = "truncated"
    FAMILY_MISMATCH = "family-mismatch"
    LOOPBACK_SOURCE = "loopback-source"
    LOCAL_SOURCE = "local-source"
    ZERO_PORT = "zero-port"
    LINK_LOCAL_SOURCE = "link-local-source"
    UNSPECIFIED_SOURCE = "unspecified-source"
    BROADCAST_SOURCE = "broadcast-source"
    MULTICAST_SOURCE = "multicast-source"
    BACKEND_SOURCE = "backend-source"
    SEND_ERROR = "send-error"
    RECEIVE_ERROR = "receive-error"
    # A range listener's datagram sent to a port outside its range, or whose original destination the
    # kernel did not tell (its control messages were cut short): never forwarded to a guessed port.
    OUTSIDE_RANGE = "outside-range"
    UNKNOWN_DESTINATION = "unknown-destination"
    # A range listener's datagram sent to one of our destinations on this host: the tproxy rule steered our
    # own datagram back, and forwarding it again would circle for ever.
    LOOP = "loop"
    # A reply from the backend (relay mode) that never reached its client.
    REPLY_TRUNCATED = "reply-truncated"
    REPLY_UNMATCHED = "reply-unmatched"
    REPLY_IN_DIRECT_MODE = "reply-in-direct-mode"
    REPLY_SEND_ERROR = "reply-send-error"
    REPLY_RECEIVE_ERROR = "reply-receive-error"


def drop_key(reason: DropReason, detail: str = "") -> str:
    """The counter and log key of a drop: the reason, and the errno name when there is one."""
    return f"{reason.value}:{detail}" if detail else reason.value


def _reasons(counts: Counter[str]) -> str:
    """' (a 1, b 2)' for the keys with a count, sorted; '' when there are none."""
    if not counts:
        return ""
    return " (" + ", ".join(f"{key} {count}" for key, count in sorted(counts.items())) + ")"


@dataclass(frozen=True, slots=True)
class Totals:
    """The counts since start, for the metrics file."""

    forwarded: int
    dropped: Counter[str]
    relayed: int
    reply_dropped: Counter[str]
    icmp_errors: Counter[str]
    # Per range listener: (listener, range, datagrams in the range, datagrams outside it).
    ranges: tuple[tuple[str, str, int, int], ...] = ()


@dataclass(slots=True)
class Counters:
    """Forwarded datagrams and drops by reason (and errno), replies relayed and reply drops by reason, ICMP
    errors reported on flow sockets by type: this interval's, and the totals of the intervals before it.
    This is the one home of the counts: STATUS= and the metrics file both read them here. `relay` says
    the replies are counted at all (--reply relay), so STATUS= names them even while they are 0."""

    relay: bool = False
    forwarded: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    relayed: int = 0
    reply_dropped: Counter[str] = field(default_factory=Counter)
    icmp_errors: Counter[str] = field(default_factory=Counter)
    total_forwarded: int = 0
    total_dropped: Counter[str] = field(default_factory=Counter)
    total_relayed: int = 0
    total_reply_dropped: Counter[str] = field(default_factory=Counter)
    total_icmp_errors: Counter[str] = field(default_factory=Counter)
    # The range listeners' own counts (forwarder.core.ranges), one entry per range, never one per port.
    ranges: list[RangeCounts] = field(default_factory=list)

    def drop(self, reason: DropReason, detail: str = "") -> None:
        self.dropped[drop_key(reason, detail)] += 1

    def since_start(self) -> Totals:
        """The counts since start, this interval included."""
        return Totals(
            self.total_forwarded + self.forwarded,
            self.total_dropped + self.dropped,
            self.total_relayed + self.relayed,
            self.total_reply_dropped + self.reply_dropped,
            self.total_icmp_errors + self.icmp_errors,
            tuple(
                (
                    item.listener,
                    str(item.ports),
                    item.total_received + item.received,
                    item.total_outside + item.outside,
                )
                for item in self.ranges
            ),
        )

    def summary(self, seconds: float, flows: int | None = None) -> str:
        """The STATUS= line: this interval's forwarded count and drops by reason (then its replies and
        ICMP errors, when there are any to tell), then the totals, then each port range's datagrams in and
        outside it."""
        dropped = sum(self.dropped.values())
        text = f"{self.forwarded} datagrams forwarded in the last {seconds:g} seconds, {dropped} dropped"
        text += _reasons(self.dropped)
        totals = self.since_start()
        replies = self.relay or totals.relayed or totals.reply_dropped
        if replies:
            reply_dropped = sum(self.reply_dropped.values())
            text += f"; {self.relayed} replies relayed, {reply_dropped} dropped{_reasons(self.reply_dropped)}"
        if self.icmp_errors:
            text += f"; {sum(self.icmp_errors.values())} ICMP errors{_reasons(self.icmp_errors)}"
        text += f"; since start {totals.forwarded} forwarded, {sum(totals.dropped.values())} dropped"
        if replies:
            text += (
                f", {totals.relayed} replies relayed, {sum(totals.reply_dropped.values())} replies dropped"
            )
        if totals.icmp_errors:
            text += f", {sum(totals.icmp_errors.values())} ICMP errors"
        for item in self.ranges:
            text += f"; {item.summary()}"
        if flows is not None:
            text += f"; {flows} flows"
        return text + "."

    def reset(self) -> None:
        """Start a new interval, keeping the totals."""
        self.total_forwarded += self.forwarded
        self.total_dropped.update(self.dropped)
        self.total_relayed += self.relayed
        self.total_reply_dropped.update(self.reply_dropped)
        self.total_icmp_errors.update(self.icmp_errors)
        self.forwarded = self.relayed = 0
        self.dropped.clear()
        self.reply_dropped.clear()
        self.icmp_errors.clear()
        for item in self.ranges:
            item.reset()


def errno_name(error_number: int) -> str:
    """ECONNREFUSED for 111: the detail of a drop caused by an errno."""
    return errno.errorcode.get(error_number, str(error_number))
