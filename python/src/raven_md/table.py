"""Events as Arrow tables, one per channel, with the schemas `raven history --format
parquet` writes (the README lists them): the same files from the CLI and from
:meth:`History.to_parquet`.

Prices and quantities become ``decimal128(38, 9)`` from the server's integers, written
straight into the array's buffer (never through floats, nor a ``Decimal`` per value).
Times are ``timestamp[ns, UTC]``. pyarrow is imported here only, when a conversion is
asked for (the ``arrow`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from raven_md.events import _AGGRESSOR, _CHANNEL_NAME, _INTERVAL, _STATUS, CHANNELS

_LIMIT = 10**38
_ZERO = bytes(16)

# Each channel's own columns, between the common head and the status tail.
_OWN = {
    "trades": ("price", "qty", "aggressor", "trade_id"),
    "book": ("side", "price", "qty", "is_snapshot", "resync"),
    "bbo": ("bid_price", "bid_qty", "ask_price", "ask_qty"),
    "candles": ("interval", "open_time", "open", "high", "low", "close", "volume", "trades"),
}
_HEAD = ("instrument", "sequence", "exchange_time", "receive_time", "publish_time")
_TAIL = ("status", "missed", "detail")


def _pa():
    try:
        import pyarrow
    except ImportError:
        raise ImportError("Arrow conversion needs pyarrow: pip install 'raven-md[arrow]'") from None
    return pyarrow


def schema(channel: str):
    """The Arrow schema of a channel's table."""
    pa = _pa()
    decimal = pa.decimal128(38, 9)
    time = pa.timestamp("ns", tz="UTC")
    label = pa.dictionary(pa.int8(), pa.string())
    types = {
        "instrument": (pa.dictionary(pa.int32(), pa.string()), False),
        "sequence": (pa.uint64(), False),
        "exchange_time": (time, False),
        "receive_time": (time, False),
        "publish_time": (time, False),
        "price": (decimal, True),
        "qty": (decimal, True),
        "aggressor": (label, True),
        "trade_id": (pa.string(), True),
        "side": (label, True),
        "is_snapshot": (pa.bool_(), False),
        "resync": (pa.bool_(), False),
        "bid_price": (decimal, True),
        "bid_qty": (decimal, True),
        "ask_price": (decimal, True),
        "ask_qty": (decimal, True),
        "interval": (label, True),
        "open_time": (time, True),
        "open": (decimal, True),
        "high": (decimal, True),
        "low": (decimal, True),
        "close": (decimal, True),
        "volume": (decimal, True),
        "trades": (pa.uint64(), True),
        "status": (label, True),
        "missed": (pa.uint64(), True),
        "detail": (pa.string(), True),
    }
    names = _HEAD + _OWN[channel] + _TAIL
    return pa.schema([pa.field(n, types[n][0], nullable=types[n][1]) for n in names])


class _Rows:
    """One channel's columns, as lists, gathered event by event."""

    def __init__(self, channel: str):
        self.channel = channel
        self.columns = {name: [] for name in _HEAD + _OWN[channel] + _TAIL}

    def head(self, e, status=None):
        c = self.columns
        c["instrument"].append(e.instrument)
        c["sequence"].append(e.sequence)
        c["exchange_time"].append(e.exchange_time)
        c["receive_time"].append(e.receive_time)
        c["publish_time"].append(e.publish_time)
        if status is None:
            c["status"].append(None)
            c["missed"].append(None)
            c["detail"].append(None)
        else:
            c["status"].append(_STATUS.get(status.kind, "unknown"))
            c["missed"].append(status.missed)
            c["detail"].append(status.detail)

    def nulls(self):
        c = self.columns
        for name in _OWN[self.channel]:
            c[name].append(False if name in ("is_snapshot", "resync") else None)


def _qty(e, lo: int, hi: int) -> int:
    q = lo | (hi << 64)
    if q >= _LIMIT:
        raise ValueError(
            f"{e.instrument} sequence {e.sequence}: quantity of {q} units (10⁻⁹) is beyond "
            "decimal128(38, 9), which holds less than 10³⁸"
        )
    return q


def _add(rows: dict, e) -> None:
    """Adds a wire event's rows to its channel's columns."""
    r = rows.get(e.channel)
    if r is None:
        return
    kind = e.WhichOneof("body")
    if kind == "status":
        r.head(e, e.status)
        r.nulls()
        return
    c = r.columns
    if kind == "trade":
        t = e.trade
        q = _qty(e, t.qty, t.qty_hi)
        r.head(e)
        c["price"].append(t.price)
        c["qty"].append(q)
        c["aggressor"].append(_AGGRESSOR.get(t.aggressor))
        c["trade_id"].append(t.trade_id)
    elif kind in ("snapshot", "delta"):
        body = e.snapshot if kind == "snapshot" else e.delta
        snapshot = kind == "snapshot"
        resync = snapshot and body.resync
        changes = [("bid", level) for level in body.bids] + [("ask", level) for level in body.asks]
        qtys = [_qty(e, level.qty, level.qty_hi) for _, level in changes]
        if not changes:
            # An empty book is still a snapshot: one row without a level.
            r.head(e)
            c["side"].append(None)
            c["price"].append(None)
            c["qty"].append(None)
            c["is_snapshot"].append(snapshot)
            c["resync"].append(resync)
        for (side, level), q in zip(changes, qtys):
            r.head(e)
            c["side"].append(side)
            c["price"].append(level.price)
            c["qty"].append(q)
            c["is_snapshot"].append(snapshot)
            c["resync"].append(resync)
    elif kind == "bbo":
        b = e.bbo
        sides = []
        for name in ("bid", "ask"):
            if b.HasField(name):
                level = getattr(b, name)
                sides.append((level.price, _qty(e, level.qty, level.qty_hi)))
            else:
                sides.append((None, None))
        r.head(e)
        c["bid_price"].append(sides[0][0])
        c["bid_qty"].append(sides[0][1])
        c["ask_price"].append(sides[1][0])
        c["ask_qty"].append(sides[1][1])
    elif kind == "candle":
        k = e.candle
        volume = _qty(e, k.volume, k.volume_hi)
        r.head(e)
        c["interval"].append(_INTERVAL.get(k.interval))
        c["open_time"].append(k.open_time)
        c["open"].append(k.open)
        c["high"].append(k.high)
        c["low"].append(k.low)
        c["close"].append(k.close)
        c["volume"].append(volume)
        c["trades"].append(k.trades)


def _decimals(pa, values: list):
    """A decimal128(38, 9) array from integer counts of 10⁻⁹ (``None`` for null)."""
    data = b"".join(_ZERO if v is None else v.to_bytes(16, "little", signed=True) for v in values)
    validity = None
    if any(v is None for v in values):
        validity = pa.array([v is not None for v in values], pa.bool_()).buffers()[1]
    return pa.Array.from_buffers(pa.decimal128(38, 9), len(values), [validity, pa.py_buffer(data)])


def _table(pa, rows: _Rows):
    sch = schema(rows.channel)
    arrays = []
    for f in sch:
        values = rows.columns[f.name]
        if pa.types.is_decimal(f.type):
            arrays.append(_decimals(pa, values))
        elif pa.types.is_dictionary(f.type):
            arrays.append(pa.array(values, pa.string()).dictionary_encode().cast(f.type))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.Table.from_arrays(arrays, schema=sch)


def tables(events: Iterable, channels: Iterable[str]) -> dict:
    """Arrow tables of wire events, one per channel named."""
    pa = _pa()
    numbers = {name: number for number, name in _CHANNEL_NAME.items()}
    rows = {numbers[name]: _Rows(name) for name in channels}
    for e in events:
        _add(rows, e)
    return {r.channel: _table(pa, r) for r in rows.values()}


def parquet_paths(path, channels: list[str]) -> list[Path]:
    """Where each channel's file goes: ``path`` for one channel; for several, ``path`` as
    a prefix (``day`` or ``day.parquet`` → ``day.trades.parquet``, …), as the CLI does."""
    path = Path(path)
    if len(channels) == 1:
        return [path]
    prefix = str(path)
    if prefix.endswith(".parquet"):
        prefix = prefix[: -len(".parquet")]
    return [Path(f"{prefix}.{channel}.parquet") for channel in channels]


def write_parquet(tables_by_channel: dict, path) -> list[Path]:
    """Writes each table as the CLI does (zstd); the files written."""
    import pyarrow.parquet as pq

    channels = [c for c in CHANNELS if c in tables_by_channel]
    paths = parquet_paths(path, channels)
    for channel, target in zip(channels, paths):
        pq.write_table(tables_by_channel[channel], target, compression="zstd")
    return paths


def single(tables_by_channel: dict, channel: Optional[str]):
    """The table of ``channel``, or of the only channel there is."""
    if channel is None:
        if len(tables_by_channel) != 1:
            raise ValueError(
                f"this result holds {', '.join(tables_by_channel)}: pass channel= to pick one"
            )
        return next(iter(tables_by_channel.values()))
    if channel not in tables_by_channel:
        raise ValueError(f"no {channel!r} in this result: it holds {', '.join(tables_by_channel)}")
    return tables_by_channel[channel]


__all__ = ["schema", "tables", "parquet_paths", "write_parquet"]
