"""Rate-limited logging of repeating events (drops, ICMP errors): one line at once, then one summary per
interval.
"""

import logging


class RepeatSummary:
    """Rate-limited logging of repeating events (a drop reason, an errno): the first occurrence of a key
    in an interval is logged at once; the rest are only counted and summarised in one line by `flush()`,
    so a flood of identical errors costs one line per interval, not one per datagram.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING) -> None:
        self.logger = logger
        self.level = level
        self._repeats: dict[str, int] = {}

    def report(self, key: str, message: str, *args: object) -> None:
        """Log `message` if `key` was not reported since the last flush; otherwise count it."""
        repeats = self._repeats.get(key)
        if repeats is None:
            self._repeats[key] = 0
            self.logger.log(self.level, message, *args)
        else:
            self._repeats[key] = repeats + 1

    def flush(self, seconds: float) -> None:
        """Log one summary line per key that repeated, then start a new interval."""
        for key, repeats in sorted(self._repeats.items()):
            if repeats:
                self.logger.log(self.level, "%s: %d more in the last %g seconds", key, repeats, seconds)
        self._repeats.clear()
