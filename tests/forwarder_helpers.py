"""What the forwarder's tests need of it and the forwarder itself does not: a flow table that can be read
and hit the way a test checks it, and one drain of a listening socket by hand."""

import time
from collections.abc import Iterator
from typing import TypeVar

from forwarder.core.flows import Entry, FlowTable
from forwarder.io.engine import Engine
from forwarder.io.listeners import Route

K = TypeVar("K")
E = TypeVar("E", bound=Entry)


class InspectableTable(FlowTable[K, E]):
    """A FlowTable whose keys a test can list and look for, with the hit of the machine's hot path."""

    def get(self, key: K, now: float) -> E | None:
        """The entry for `key`, marked as used at `now` (as the machine marks a hit), or None."""
        entry = self.lookup(key)
        if entry is not None:
            entry.last_used = now
            entry.referenced = True
        return entry

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """The keys, oldest inserted first (a snapshot: the table may change while iterating)."""
        return iter(list(self._entries))


def drain(engine: Engine, route: Route) -> None:
    """Handle what is queued on `route`'s listening socket now (up to the strategy's limit), as the loop
    does when the selector reports it."""
    engine.strategy.drain(route, time.monotonic())
