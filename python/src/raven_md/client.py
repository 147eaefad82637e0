"""The clients: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio), over the
server's gRPC API (Market, History).

Arguments are checked before any call: an unknown channel or a naive ``datetime`` is a
``ValueError``. A call the server refuses raises the :mod:`raven_md.errors` class of its
status code, with the server's message.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator, Iterable, Iterator, Optional, Union

import grpc

from raven_md import table
from raven_md._pb.raven.v1 import raven_pb2 as pb
from raven_md._pb.raven.v1 import raven_pb2_grpc as rpc
from raven_md.errors import from_rpc
from raven_md.events import CHANNELS, BookSnapshot, Event, Instrument, channel_number, from_pb

Time = Union[datetime, int, None]
"""An instant: a timezone-aware ``datetime`` or integer nanoseconds since the Unix epoch."""

_MAX_MESSAGE = 64 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _nanos(value: Time, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError(
                f"{name}: a naive datetime is ambiguous; give it a timezone (e.g. tzinfo=timezone.utc)"
            )
        # In integers throughout: `timestamp()` is a float, which can round a time near a
        # second's end into the next second.
        delta = value - _EPOCH
        value = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    elif isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected a timezone-aware datetime or integer nanoseconds, got {value!r}")
    if value < 0:
        raise ValueError(f"{name}: {value} is before the Unix epoch")
    return value


def _names(instruments: Union[str, Iterable[str]]) -> list[str]:
    names = [instruments] if isinstance(instruments, str) else list(instruments)
    if not names:
        raise ValueError("name at least one instrument")
    return names


def _channels(channels: Union[str, Iterable[str], None]) -> list[str]:
    if channels is None:
        return list(CHANNELS)
    names = [channels] if isinstance(channels, str) else list(channels)
    for name in names:
        channel_number(name)
    return [c for c in CHANNELS if c in names]


@dataclass(frozen=True)
class Query:
    """Recorded events of ``instruments`` and ``channels`` (all when ``None``) published in
    [``start``, ``end``), at most ``limit`` (0: no limit)."""

    instruments: Union[str, list[str]]
    channels: Union[str, list[str], None] = None
    start: Time = None
    end: Time = None
    limit: int = 0
    _checked: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        names = _names(self.instruments)
        channels = _channels(self.channels)
        start, end = _nanos(self.start, "start"), _nanos(self.end, "end")
        if not isinstance(self.limit, int) or self.limit < 0:
            raise ValueError(f"limit: expected a count >= 0, got {self.limit!r}")
        object.__setattr__(self, "_checked", (names, channels, start, end))

    @property
    def channel_names(self) -> list[str]:
        return self._checked[1]

    def to_pb(self) -> pb.HistoryRequest:
        names, channels, start, end = self._checked
        explicit = self.channels is not None
        return pb.HistoryRequest(
            instruments=names,
            channels=[channel_number(c) for c in channels] if explicit else [],
            to=end,
            limit=self.limit,
            **{"from": start},
        )


class _Tables:
    """The conversions both history kinds share, over a dict of Arrow tables."""

    @staticmethod
    def _arrow(tables: dict, channel: Optional[str]):
        return table.single(tables, channel)

    @staticmethod
    def _pandas(arrow):
        import pandas as pd

        return arrow.to_pandas(types_mapper=pd.ArrowDtype)

    @staticmethod
    def _polars(arrow):
        import polars as pl

        return pl.from_arrow(arrow)


class History(_Tables):
    """A history query's answer, fetched when first asked for and then kept: iterate it
    (or read ``events``) for typed events in record order, as streamed; or take it whole
    as tables with :meth:`to_arrow`, :meth:`to_pandas`, :meth:`to_polars`,
    :meth:`to_parquet`, which the server builds (``History.QueryArrow``), so nothing is
    decoded event by event here. The two views are separate calls: give ``end`` for
    both to see the same events while the server records."""

    def __init__(self, client: "Client", query: "Query"):
        self._client = client
        self.query = query
        self.channels = query.channel_names
        self._events: Optional[list] = None
        self._tables: Optional[dict] = None

    @property
    def events(self) -> list[Event]:
        if self._events is None:
            self._events = self._client._query_events(self.query)
        return self._events

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def tables(self) -> dict:
        """An Arrow table per channel of the query."""
        if self._tables is None:
            self._tables = self._client._query_tables(self.query)
        return self._tables

    def to_arrow(self, channel: Optional[str] = None):
        """The Arrow table of ``channel`` (or of the query's only channel)."""
        return self._arrow(self.tables(), channel)

    def to_pandas(self, channel: Optional[str] = None):
        """A DataFrame with Arrow-backed columns (exact decimals, UTC nanosecond times)."""
        return self._pandas(self.to_arrow(channel))

    def to_polars(self, channel: Optional[str] = None):
        """A polars DataFrame (``Decimal(38, 9)`` prices and quantities)."""
        return self._polars(self.to_arrow(channel))

    def to_parquet(self, path) -> list[Path]:
        """Parquet files as `raven history --format parquet` writes them: ``path`` for one
        channel, ``path`` as a prefix for several. The files written."""
        return table.write_parquet(self.tables(), path)


class AsyncHistory(_Tables):
    """:class:`History` for :class:`AsyncClient`: the same views, awaited
    (``await h.events()``, ``async for e in h``, ``await h.to_arrow()``, …)."""

    def __init__(self, client: "AsyncClient", query: "Query"):
        self._client = client
        self.query = query
        self.channels = query.channel_names
        self._events: Optional[list] = None
        self._tables: Optional[dict] = None

    async def events(self) -> list[Event]:
        if self._events is None:
            self._events = await self._client._query_events(self.query)
        return self._events

    async def __aiter__(self):
        for event in await self.events():
            yield event

    async def tables(self) -> dict:
        if self._tables is None:
            self._tables = await self._client._query_tables(self.query)
        return self._tables

    async def to_arrow(self, channel: Optional[str] = None):
        return self._arrow(await self.tables(), channel)

    async def to_pandas(self, channel: Optional[str] = None):
        return self._pandas(await self.to_arrow(channel))

    async def to_polars(self, channel: Optional[str] = None):
        return self._polars(await self.to_arrow(channel))

    async def to_parquet(self, path) -> list[Path]:
        return table.write_parquet(await self.tables(), path)


def _credentials(tls):
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, Tls):
        return tls.credentials()
    raise ValueError(f"tls: expected None, True or raven_md.Tls, got {tls!r}")


@dataclass(frozen=True)
class Tls:
    """TLS to the server: ``ca`` (PEM path) to trust, and ``cert``/``key`` (PEM paths)
    when the server asks clients for a certificate."""

    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None

    def credentials(self):
        read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


def _target(server: str, tls):
    for scheme, secure in (("https://", True), ("http://", False)):
        if server.startswith(scheme):
            return server[len(scheme) :].rstrip("/"), (tls if tls is not None else (True if secure else None))
    return server, tls


def _options():
    return [
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
    ]


class _Base:
    def __init__(self, server: str, key: Optional[str], tls):
        target, tls = _target(server, tls)
        self.server = target
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self._tls = tls
        self._credentials = None if tls is None else _credentials(tls)


class Client(_Base):
    """A blocking client. ``server`` is ``host:port`` (``http://`` or ``https://`` URLs
    too); ``key`` an API key; ``tls`` ``True`` (public roots) or :class:`Tls`."""

    def __init__(self, server: str = "127.0.0.1:50051", key: Optional[str] = None, tls=None):
        super().__init__(server, key, tls)
        if self._credentials is None:
            self._channel = grpc.insecure_channel(self.server, options=_options())
        else:
            self._channel = grpc.secure_channel(self.server, self._credentials, options=_options())
        self._market = rpc.MarketStub(self._channel)
        self._history = rpc.HistoryStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def instruments(self) -> list[Instrument]:
        """Every instrument the server knows."""
        try:
            answer = self._market.ListInstruments(pb.ListInstrumentsRequest(), metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc(e) from None
        return [Instrument(i.name, i.venue, i.symbol, i.tick_size) for i in answer.instruments]

    def snapshot(self, instrument: str, depth: int = 0) -> BookSnapshot:
        """The current book (``depth`` levels a side, 0 for all) at a consistent sequence."""
        try:
            e = self._market.GetSnapshot(
                pb.GetSnapshotRequest(instrument=instrument, depth=depth), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc(err) from None
        return from_pb(e)

    def subscribe(
        self,
        instruments: Union[str, Iterable[str]],
        channel: str,
        depth: int = 0,
        start: Time = None,
    ) -> "Subscription":
        """Live events of ``channel`` for ``instruments``: an iterator of typed events (book:
        a snapshot, then deltas). With ``start``, the recorded events since then come
        first, then a :class:`~raven_md.events.HistoryEnd`, then live events, with no gap
        and no duplicate."""
        request = pb.Subscribe(
            instruments=_names(instruments),
            channel=channel_number(channel),
            depth=depth,
            start=_nanos(start, "start"),
        )
        return Subscription(self._market, request, self._metadata)

    def history(
        self,
        instruments: Union[str, Iterable[str]],
        channels: Union[str, Iterable[str], None] = None,
        start: Time = None,
        end: Time = None,
        limit: int = 0,
    ) -> History:
        """Recorded events published in [``start``, ``end``): a :class:`History`, fetched
        when first used."""
        return History(self, Query(instruments, channels, start, end, limit))

    def _query_events(self, query: Query) -> list[Event]:
        try:
            responses = self._history.Query(query.to_pb(), metadata=self._metadata)
            return [event for r in responses for event in map(from_pb, r.events) if event is not None]
        except grpc.RpcError as e:
            raise from_rpc(e) from None

    def _query_tables(self, query: Query) -> dict:
        try:
            batches = self._history.QueryArrow(query.to_pb(), metadata=self._metadata)
            return table.from_ipc(batches, query.channel_names)
        except grpc.RpcError as e:
            raise from_rpc(e) from None

    def book_at(self, instrument: str, at: Time, depth: int = 0) -> BookSnapshot:
        """The book as it was at ``at``."""
        request = pb.BookAtRequest(instrument=instrument, at=_nanos(at, "at"), depth=depth)
        try:
            e = self._history.BookAt(request, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc(err) from None
        return from_pb(e)

    def replay(self, query: Query, speed: float = 1.0) -> Iterator[Event]:
        """The events of ``query``, paced as recorded (``speed`` 10: ten times faster; 0:
        as fast as you read)."""
        call = self._history.Replay(_replay_request(query, speed), metadata=self._metadata)
        return self._events(call)

    @staticmethod
    def _events(call) -> Iterator[Event]:
        try:
            for response in call:
                for e in response.events:
                    event = from_pb(e)
                    if event is not None:
                        yield event
        except grpc.RpcError as e:
            raise from_rpc(e) from None
        finally:
            call.cancel()


def _replay_request(query: Query, speed: float) -> pb.ReplayRequest:
    if not isinstance(query, Query):
        raise ValueError(f"query: expected raven_md.Query, got {query!r}")
    if speed < 0:
        raise ValueError(f"speed: expected >= 0, got {speed}")
    return pb.ReplayRequest(query=query.to_pb(), speed=speed)


class Subscription:
    """A live subscription: iterate it for events; :meth:`close` (or leaving a ``with``
    block) ends it."""

    def __init__(self, market, subscribe: pb.Subscribe, metadata):
        self._requests: "queue.Queue" = queue.Queue()
        self._requests.put(pb.StreamRequest(subscribe=subscribe))
        self._call = market.Stream(iter(self._requests.get, None), metadata=metadata)
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Event]:
        try:
            for response in self._call:
                for e in response.events:
                    event = from_pb(e)
                    if event is not None:
                        yield event
        except grpc.RpcError as e:
            if self._closed.is_set() and e.code() == grpc.StatusCode.CANCELLED:
                return
            raise from_rpc(e) from None

    def close(self) -> None:
        self._closed.set()
        self._requests.put(None)
        self._call.cancel()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Base):
    """The asyncio client: the same calls as :class:`Client`, awaited; ``subscribe`` and
    ``replay`` are async iterators."""

    def __init__(self, server: str = "127.0.0.1:50051", key: Optional[str] = None, tls=None):
        super().__init__(server, key, tls)
        if self._credentials is None:
            self._channel = grpc.aio.insecure_channel(self.server, options=_options())
        else:
            self._channel = grpc.aio.secure_channel(self.server, self._credentials, options=_options())
        self._market = rpc.MarketStub(self._channel)
        self._history = rpc.HistoryStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def instruments(self) -> list[Instrument]:
        try:
            answer = await self._market.ListInstruments(pb.ListInstrumentsRequest(), metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc(e) from None
        return [Instrument(i.name, i.venue, i.symbol, i.tick_size) for i in answer.instruments]

    async def snapshot(self, instrument: str, depth: int = 0) -> BookSnapshot:
        try:
            e = await self._market.GetSnapshot(
                pb.GetSnapshotRequest(instrument=instrument, depth=depth), metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc(err) from None
        return from_pb(e)

    def subscribe(
        self,
        instruments: Union[str, Iterable[str]],
        channel: str,
        depth: int = 0,
        start: Time = None,
    ) -> AsyncIterator[Event]:
        """An async iterator of live events, as :meth:`Client.subscribe`."""
        request = pb.StreamRequest(
            subscribe=pb.Subscribe(
                instruments=_names(instruments),
                channel=channel_number(channel),
                depth=depth,
                start=_nanos(start, "start"),
            )
        )
        return self._events(lambda: self._market.Stream(metadata=self._metadata), request)

    def history(
        self,
        instruments: Union[str, Iterable[str]],
        channels: Union[str, Iterable[str], None] = None,
        start: Time = None,
        end: Time = None,
        limit: int = 0,
    ) -> AsyncHistory:
        """As :meth:`Client.history`; the views are awaited."""
        return AsyncHistory(self, Query(instruments, channels, start, end, limit))

    async def _query_events(self, query: Query) -> list[Event]:
        events = []
        try:
            async for response in self._history.Query(query.to_pb(), metadata=self._metadata):
                events.extend(e for e in map(from_pb, response.events) if e is not None)
        except grpc.RpcError as e:
            raise from_rpc(e) from None
        return events

    async def _query_tables(self, query: Query) -> dict:
        batches = []
        try:
            async for batch in self._history.QueryArrow(query.to_pb(), metadata=self._metadata):
                batches.append(batch)
        except grpc.RpcError as e:
            raise from_rpc(e) from None
        return table.from_ipc(batches, query.channel_names)

    async def book_at(self, instrument: str, at: Time, depth: int = 0) -> BookSnapshot:
        request = pb.BookAtRequest(instrument=instrument, at=_nanos(at, "at"), depth=depth)
        try:
            e = await self._history.BookAt(request, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc(err) from None
        return from_pb(e)

    def replay(self, query: Query, speed: float = 1.0) -> AsyncIterator[Event]:
        """An async iterator of the events of ``query``, paced as recorded."""
        request = _replay_request(query, speed)
        return self._events(lambda: self._history.Replay(request, metadata=self._metadata))

    @staticmethod
    async def _events(start, first=None) -> AsyncIterator[Event]:
        call = start()
        try:
            if first is not None:
                await call.write(first)
            async for response in call:
                for e in response.events:
                    event = from_pb(e)
                    if event is not None:
                        yield event
        except grpc.RpcError as e:
            raise from_rpc(e) from None
        finally:
            call.cancel()
