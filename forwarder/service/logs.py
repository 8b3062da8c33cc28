"""Logging for a systemd service: `<N>` priority prefixes when stderr is the journal (sd-daemon(3)),
a plain human format otherwise.
"""

import logging
import os
import sys
from collections.abc import Mapping

from forwarder.core.destination import decimal

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """Prefixes each line with its syslog priority so journald files it correctly."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{super().format(record)}"


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when JOURNAL_STREAM names the device and inode of our stderr."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    text_device, _, text_inode = value.partition(":")
    device, inode = decimal(text_device), decimal(text_inode)
    if device is None or inode is None:
        return False
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def configure(level: str = "info", environ: Mapping[str, str] | None = None) -> logging.Logger:
    """Set up the forwarder's logger on stderr and return it."""
    logger = logging.getLogger("forwarder")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal(environ):
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger
