"""Typed events: what the server streams, as plain Python objects.

Prices and quantities stay the server's exact integers, counted in units of 10⁻⁹
(``price`` 65000100000000 is 65000.1); ``price_decimal`` and ``qty_decimal`` give the
exact :class:`decimal.Decimal`. Times are integer nanoseconds since the Unix epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from itertools import zip_longest
from typing import Optional

from raven_md._pb.raven.v1 import raven_pb2 as pb

SCALE = 9
"""Decimal places of every price and quantity."""

CHANNELS = ("book", "bbo", "trades", "candles")
"""The channel names, as every call takes them."""

_CHANNEL_NUMBER = {
    "book": pb.CHANNEL_BOOK,
    "bbo": pb.CHANNEL_BBO,
    "trades": pb.CHANNEL_TRADES,
    "candles": pb.CHANNEL_CANDLES,
}
_CHANNEL_NAME = {number: name for name, number in _CHANNEL_NUMBER.items()}
_AGGRESSOR = {pb.AGGRESSOR_BUY: "buy", pb.AGGRESSOR_SELL: "sell"}
_INTERVAL = {pb.CANDLE_INTERVAL_1S: "1s", pb.CANDLE_INTERVAL_1M: "1m"}
_STATUS = {
    pb.STATUS_KIND_GAP: "gap",
    pb.STATUS_KIND_RESYNC: "resync",
    pb.STATUS_KIND_FEED_DOWN: "feed_down",
    pb.STATUS_KIND_FEED_UP: "feed_up",
    pb.STATUS_KIND_STALE: "stale",
    pb.STATUS_KIND_REJECTED: "rejected",
    pb.STATUS_KIND_GOING_AWAY: "going_away",
}


def channel_number(name: str) -> int:
    """The wire number of a channel name; ``ValueError`` naming the choices otherwise."""
    try:
        return _CHANNEL_NUMBER[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown channel {name!r}: expected one of {', '.join(CHANNELS)}") from None


def decimal(units: int) -> Decimal:
    """The exact decimal of a count of 10⁻⁹ units (built from its digits: arithmetic
    such as ``scaleb`` would round to the context's 28 digits, and quantities have up
    to 39)."""
    return Decimal((1 if units < 0 else 0, tuple(map(int, str(abs(units)))), -SCALE))


def text(units: int) -> str:
    """Raven's canonical decimal text of a count of 10⁻⁹ units (no trailing zeros), as
    the CLI prints it."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**SCALE)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{SCALE}d}".rstrip("0")


def _qty(lo: int, hi: int) -> int:
    return lo | (hi << 64)


@dataclass(frozen=True)
class Level:
    """A price level: ``qty`` at ``price`` (both in 10⁻⁹ units)."""

    price: int
    qty: int

    @property
    def price_decimal(self) -> Decimal:
        return decimal(self.price)

    @property
    def qty_decimal(self) -> Decimal:
        return decimal(self.qty)


def _levels(levels) -> list[Level]:
    return [Level(level.price, _qty(level.qty, level.qty_hi)) for level in levels]


@dataclass(frozen=True)
class Event:
    """What every event carries."""

    instrument: str
    channel: Optional[str]
    sequence: int
    exchange_time: int
    receive_time: int
    publish_time: int
    venue_seq: int


@dataclass(frozen=True)
class BookSnapshot(Event):
    """The whole book (or its top ``depth`` levels): bids best first, asks best first.
    ``resync`` is set when it replaces a book the stream could not keep up to date."""

    bids: list[Level] = field(default_factory=list)
    asks: list[Level] = field(default_factory=list)
    resync: bool = False

    def __str__(self) -> str:
        """A ladder: bid size and price | ask price and size, best first."""
        lines = [f"{self.instrument} at sequence {self.sequence}"]
        for bid, ask in zip_longest(self.bids, self.asks):
            left = f"{text(bid.qty):>16} {text(bid.price):>18}" if bid else " " * 35
            right = f"{text(ask.price):<18} {text(ask.qty)}" if ask else ""
            lines.append(f"{left} | {right}".rstrip())
        return "\n".join(lines)


@dataclass(frozen=True)
class BookDelta(Event):
    """Changed levels, applied in order; a quantity of 0 removes the level."""

    bids: list[Level] = field(default_factory=list)
    asks: list[Level] = field(default_factory=list)


@dataclass(frozen=True)
class Trade(Event):
    """A trade. ``aggressor`` is ``"buy"``, ``"sell"`` or ``None`` when the venue does not say."""

    price: int = 0
    qty: int = 0
    aggressor: Optional[str] = None
    trade_id: str = ""

    @property
    def price_decimal(self) -> Decimal:
        return decimal(self.price)

    @property
    def qty_decimal(self) -> Decimal:
        return decimal(self.qty)


@dataclass(frozen=True)
class Bbo(Event):
    """Top of book; a side is ``None`` when empty."""

    bid: Optional[Level] = None
    ask: Optional[Level] = None


@dataclass(frozen=True)
class Candle(Event):
    """An OHLCV bar (``interval`` ``"1s"`` or ``"1m"``), sent when it closes."""

    interval: str = ""
    open_time: int = 0
    open: int = 0
    high: int = 0
    low: int = 0
    close: int = 0
    volume: int = 0
    trades: int = 0

    @property
    def open_decimal(self) -> Decimal:
        return decimal(self.open)

    @property
    def high_decimal(self) -> Decimal:
        return decimal(self.high)

    @property
    def low_decimal(self) -> Decimal:
        return decimal(self.low)

    @property
    def close_decimal(self) -> Decimal:
        return decimal(self.close)

    @property
    def volume_decimal(self) -> Decimal:
        return decimal(self.volume)


@dataclass(frozen=True)
class Status(Event):
    """A gap (``missed`` events lost), a resync, a feed going down or up, staleness, a
    refused update, or the server going away."""

    kind: str = ""
    missed: int = 0
    detail: str = ""


@dataclass(frozen=True)
class SnapshotEnd(Event):
    """Ends a subscription's snapshot part for its instrument: what follows is live."""


@dataclass(frozen=True)
class HistoryEnd(Event):
    """Ends the recorded part of a subscription with a start: live events follow."""


def from_pb(e) -> Optional[Event]:
    """The typed event of a wire event; ``None`` for what a caller never sees
    (heartbeat acknowledgements)."""
    kind = e.WhichOneof("body")
    head = (
        e.instrument,
        _CHANNEL_NAME.get(e.channel),
        e.sequence,
        e.exchange_time,
        e.receive_time,
        e.publish_time,
        e.venue_seq,
    )
    if kind == "delta":
        return BookDelta(*head, bids=_levels(e.delta.bids), asks=_levels(e.delta.asks))
    if kind == "trade":
        t = e.trade
        return Trade(*head, t.price, _qty(t.qty, t.qty_hi), _AGGRESSOR.get(t.aggressor), t.trade_id)
    if kind == "bbo":
        b = e.bbo
        bid = Level(b.bid.price, _qty(b.bid.qty, b.bid.qty_hi)) if b.HasField("bid") else None
        ask = Level(b.ask.price, _qty(b.ask.qty, b.ask.qty_hi)) if b.HasField("ask") else None
        return Bbo(*head, bid=bid, ask=ask)
    if kind == "snapshot":
        s = e.snapshot
        return BookSnapshot(*head, bids=_levels(s.bids), asks=_levels(s.asks), resync=s.resync)
    if kind == "candle":
        c = e.candle
        return Candle(
            *head,
            _INTERVAL.get(c.interval, ""),
            c.open_time,
            c.open,
            c.high,
            c.low,
            c.close,
            _qty(c.volume, c.volume_hi),
            c.trades,
        )
    if kind == "status":
        s = e.status
        return Status(*head, _STATUS.get(s.kind, "unknown"), s.missed, s.detail)
    if kind == "snapshot_end":
        return SnapshotEnd(*head)
    if kind == "history_end":
        return HistoryEnd(*head)
    return None


@dataclass(frozen=True)
class Instrument:
    """An instrument the server knows: ``name`` is ``VENUE:SYMBOL``; ``tick_size`` in 10⁻⁹ units."""

    name: str
    venue: str
    symbol: str
    tick_size: int
