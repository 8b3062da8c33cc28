"""Waiting for kernel state instead of sleeping: poll a cheap check with a growing delay and a deadline."""

import time
from collections.abc import Callable

from netlab.errors import LabTimeoutError


def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll `condition()` (a cheap check of kernel state) until it is true, with a deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not condition():
        if time.monotonic() > deadline:
            raise LabTimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
