"""A local copy of one instrument's book, kept from a book subscription's events."""

from __future__ import annotations

from typing import Optional

from raven_md.errors import GapError
from raven_md.events import BookDelta, BookSnapshot, Event, Level, Status


class BookBuilder:
    """Applies snapshots and deltas of one instrument, checking that each delta's
    sequence follows the last event applied.

    A ``resync`` status from the server means the stream dropped book updates for this
    subscriber: the builder waits for the resync snapshot that follows, and ``synced`` is
    false until then. A delta whose sequence skips ahead with no resync announced cannot
    be repaired from the stream: :class:`GapError` (subscribe again).
    """

    def __init__(self, instrument: Optional[str] = None):
        self.instrument = instrument
        self.sequence = 0
        self.synced = False
        self._bids: dict[int, int] = {}
        self._asks: dict[int, int] = {}

    def apply(self, event: Event) -> bool:
        """Applies a book event of this instrument; true when the book changed. Other
        events (another instrument's, markers, trades) are ignored."""
        if self.instrument is None:
            self.instrument = event.instrument
        if event.instrument != self.instrument:
            return False
        if isinstance(event, BookSnapshot):
            self._bids = {level.price: level.qty for level in event.bids}
            self._asks = {level.price: level.qty for level in event.asks}
            self.sequence = event.sequence
            self.synced = True
            return True
        if isinstance(event, Status) and event.kind == "resync":
            self.synced = False
            return False
        if not isinstance(event, BookDelta):
            return False
        if not self.synced:
            return False
        if event.sequence <= self.sequence:
            return False
        if event.sequence != self.sequence + 1:
            raise GapError(
                f"{self.instrument}: book sequence jumped from {self.sequence} to {event.sequence} "
                "with no resync: subscribe again"
            )
        for side, levels in ((self._bids, event.bids), (self._asks, event.asks)):
            for level in levels:
                if level.qty == 0:
                    side.pop(level.price, None)
                else:
                    side[level.price] = level.qty
        self.sequence = event.sequence
        return True

    def bids(self, depth: int = 0) -> list[Level]:
        """Bids, highest price first (``depth`` levels, or all)."""
        prices = sorted(self._bids, reverse=True)
        return [Level(p, self._bids[p]) for p in (prices[:depth] if depth else prices)]

    def asks(self, depth: int = 0) -> list[Level]:
        """Asks, lowest price first (``depth`` levels, or all)."""
        prices = sorted(self._asks)
        return [Level(p, self._asks[p]) for p in (prices[:depth] if depth else prices)]

    def best_bid(self) -> Optional[Level]:
        if not self._bids:
            return None
        price = max(self._bids)
        return Level(price, self._bids[price])

    def best_ask(self) -> Optional[Level]:
        if not self._asks:
            return None
        price = min(self._asks)
        return Level(price, self._asks[price])

    def __repr__(self) -> str:
        return (
            f"BookBuilder({self.instrument!r}, sequence={self.sequence}, "
            f"bid={self.best_bid()}, ask={self.best_ask()})"
        )
