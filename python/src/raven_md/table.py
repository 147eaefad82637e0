"""History as Arrow tables, one per channel, with the schemas `raven history --format
parquet` writes (the README lists them): the server builds them (``History.QueryArrow``)
and sends Arrow IPC, so nothing is decoded here event by event, and the CLI's files and
:meth:`History.to_parquet`'s are the same.

Prices and quantities are ``decimal128(38, 9)`` made from the server's integers (never
through floats), times ``timestamp[ns, UTC]``. pyarrow is imported here only, when a
table is asked for (the ``arrow`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from raven_md.events import _CHANNEL_NAME, CHANNELS

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


def from_ipc(batches: Iterable, channels: list[str]) -> dict:
    """The tables of a ``QueryArrow`` answer: each message's Arrow IPC stream, gathered
    by channel; a channel with no rows is an empty table of its schema."""
    pa = _pa()
    parts: dict = {channel: [] for channel in channels}
    for batch in batches:
        channel = _CHANNEL_NAME.get(batch.channel)
        if channel in parts:
            parts[channel].append(pa.ipc.open_stream(batch.ipc).read_all())
    tables = {}
    for channel, tabs in parts.items():
        expected = schema(channel)
        for t in tabs:
            if t.schema != expected:
                raise ValueError(f"the server sent {channel} with another schema: {t.schema}")
        tables[channel] = pa.concat_tables(tabs) if tabs else expected.empty_table()
    return tables


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


__all__ = ["schema", "from_ipc", "parquet_paths", "write_parquet", "single"]
