"""Loads in progress, so that each is made once however many reads want it.

A read that wants a piece nobody is loading claims it and loads it (from the
chunk cache's disk, else from the blob); a read that finds it claimed waits
for that flight and takes its result. The same map holds the compressed spans
being fetched, under keys of their own: formats whose pieces of one span
differ only in how far they decode (gzip, zstd) would otherwise fetch a span
twice when two reads want different pieces of it at once.

A flight always lands: with bytes, with an error (waiters try again
themselves, within their own read's retry budget), or with neither when its
owner was cancelled (waiters try again without spending any of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Iterable

import trio

from ..errors import LazyfsError


@dataclass(eq=False)
class Flight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: LazyfsError | None = None
    fetched: bool = False
    """Whether the bytes came from the blob rather than from the chunk cache."""


class Flights:
    """The one map of flights, by key; used from the event loop only."""

    def __init__(self) -> None:
        self._map: dict[Hashable, Flight] = {}

    def claim(self, keys: Iterable[Hashable]) -> tuple[dict[Hashable, Flight],
                                                       dict[Hashable, Flight]]:
        """Flights started for keys nobody is loading (``mine``: the caller
        must land them) and those already under way (``theirs``: to wait for)."""
        mine: dict[Hashable, Flight] = {}
        theirs: dict[Hashable, Flight] = {}
        for key in keys:
            flight = self._map.get(key)
            if flight is None:
                flight = mine[key] = self._map[key] = Flight()
            else:
                theirs[key] = flight
        return mine, theirs

    def busy(self, keys: Iterable[Hashable]) -> list[Flight]:
        return list(dict.fromkeys(f for k in keys if (f := self._map.get(k)) is not None))

    def land(self, key: Hashable, flight: Flight, data: bytes | None = None,
             error: LazyfsError | None = None, fetched: bool = False) -> None:
        if flight.done.is_set():
            return
        flight.data, flight.error, flight.fetched = data, error, fetched
        if self._map.get(key) is flight:
            del self._map[key]
        flight.done.set()

    def fail(self, flights: dict[Hashable, Flight], error: LazyfsError | None) -> None:
        """Land every flight of ``flights`` not landed yet with ``error``."""
        for key, flight in flights.items():
            self.land(key, flight, error=error)

    def __len__(self) -> int:
        return len(self._map)
