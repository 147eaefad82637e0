from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Channel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNEL_UNSPECIFIED: _ClassVar[Channel]
    CHANNEL_BOOK: _ClassVar[Channel]
    CHANNEL_BBO: _ClassVar[Channel]
    CHANNEL_TRADES: _ClassVar[Channel]
    CHANNEL_CANDLES: _ClassVar[Channel]

class Aggressor(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGRESSOR_UNSPECIFIED: _ClassVar[Aggressor]
    AGGRESSOR_BUY: _ClassVar[Aggressor]
    AGGRESSOR_SELL: _ClassVar[Aggressor]

class CandleInterval(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANDLE_INTERVAL_UNSPECIFIED: _ClassVar[CandleInterval]
    CANDLE_INTERVAL_1S: _ClassVar[CandleInterval]
    CANDLE_INTERVAL_1M: _ClassVar[CandleInterval]

class StatusKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_KIND_UNSPECIFIED: _ClassVar[StatusKind]
    STATUS_KIND_GAP: _ClassVar[StatusKind]
    STATUS_KIND_RESYNC: _ClassVar[StatusKind]
    STATUS_KIND_FEED_DOWN: _ClassVar[StatusKind]
    STATUS_KIND_FEED_UP: _ClassVar[StatusKind]
    STATUS_KIND_STALE: _ClassVar[StatusKind]
    STATUS_KIND_REJECTED: _ClassVar[StatusKind]
    STATUS_KIND_GOING_AWAY: _ClassVar[StatusKind]
CHANNEL_UNSPECIFIED: Channel
CHANNEL_BOOK: Channel
CHANNEL_BBO: Channel
CHANNEL_TRADES: Channel
CHANNEL_CANDLES: Channel
AGGRESSOR_UNSPECIFIED: Aggressor
AGGRESSOR_BUY: Aggressor
AGGRESSOR_SELL: Aggressor
CANDLE_INTERVAL_UNSPECIFIED: CandleInterval
CANDLE_INTERVAL_1S: CandleInterval
CANDLE_INTERVAL_1M: CandleInterval
STATUS_KIND_UNSPECIFIED: StatusKind
STATUS_KIND_GAP: StatusKind
STATUS_KIND_RESYNC: StatusKind
STATUS_KIND_FEED_DOWN: StatusKind
STATUS_KIND_FEED_UP: StatusKind
STATUS_KIND_STALE: StatusKind
STATUS_KIND_REJECTED: StatusKind
STATUS_KIND_GOING_AWAY: StatusKind

class HistoryRequest(_message.Message):
    __slots__ = ("instruments", "channels", "to", "limit")
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    instruments: _containers.RepeatedScalarFieldContainer[str]
    channels: _containers.RepeatedScalarFieldContainer[Channel]
    to: int
    limit: int
    def __init__(self, instruments: _Optional[_Iterable[str]] = ..., channels: _Optional[_Iterable[_Union[Channel, str]]] = ..., to: _Optional[int] = ..., limit: _Optional[int] = ..., **kwargs) -> None: ...

class ArrowBatch(_message.Message):
    __slots__ = ("channel", "ipc")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    IPC_FIELD_NUMBER: _ClassVar[int]
    channel: Channel
    ipc: bytes
    def __init__(self, channel: _Optional[_Union[Channel, str]] = ..., ipc: _Optional[bytes] = ...) -> None: ...

class BookAtRequest(_message.Message):
    __slots__ = ("instrument", "at", "depth")
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    instrument: str
    at: int
    depth: int
    def __init__(self, instrument: _Optional[str] = ..., at: _Optional[int] = ..., depth: _Optional[int] = ...) -> None: ...

class ReplayRequest(_message.Message):
    __slots__ = ("query", "speed")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    query: HistoryRequest
    speed: float
    def __init__(self, query: _Optional[_Union[HistoryRequest, _Mapping]] = ..., speed: _Optional[float] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("subscribe", "unsubscribe", "heartbeat")
    SUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    UNSUBSCRIBE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    subscribe: Subscribe
    unsubscribe: Unsubscribe
    heartbeat: Heartbeat
    def __init__(self, subscribe: _Optional[_Union[Subscribe, _Mapping]] = ..., unsubscribe: _Optional[_Union[Unsubscribe, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Subscribe(_message.Message):
    __slots__ = ("instruments", "channel", "depth", "start")
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    instruments: _containers.RepeatedScalarFieldContainer[str]
    channel: Channel
    depth: int
    start: int
    def __init__(self, instruments: _Optional[_Iterable[str]] = ..., channel: _Optional[_Union[Channel, str]] = ..., depth: _Optional[int] = ..., start: _Optional[int] = ...) -> None: ...

class Unsubscribe(_message.Message):
    __slots__ = ("instruments", "channel")
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    instruments: _containers.RepeatedScalarFieldContainer[str]
    channel: Channel
    def __init__(self, instruments: _Optional[_Iterable[str]] = ..., channel: _Optional[_Union[Channel, str]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Level(_message.Message):
    __slots__ = ("price", "qty", "qty_hi")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    QTY_HI_FIELD_NUMBER: _ClassVar[int]
    price: int
    qty: int
    qty_hi: int
    def __init__(self, price: _Optional[int] = ..., qty: _Optional[int] = ..., qty_hi: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("instrument", "channel", "sequence", "exchange_time", "receive_time", "publish_time", "venue_seq", "snapshot", "delta", "trade", "bbo", "candle", "status", "snapshot_end", "heartbeat_ack", "history_end")
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_TIME_FIELD_NUMBER: _ClassVar[int]
    VENUE_SEQ_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TRADE_FIELD_NUMBER: _ClassVar[int]
    BBO_FIELD_NUMBER: _ClassVar[int]
    CANDLE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_END_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_ACK_FIELD_NUMBER: _ClassVar[int]
    HISTORY_END_FIELD_NUMBER: _ClassVar[int]
    instrument: str
    channel: Channel
    sequence: int
    exchange_time: int
    receive_time: int
    publish_time: int
    venue_seq: int
    snapshot: BookSnapshot
    delta: BookDelta
    trade: Trade
    bbo: Bbo
    candle: Candle
    status: Status
    snapshot_end: SnapshotEnd
    heartbeat_ack: HeartbeatAck
    history_end: HistoryEnd
    def __init__(self, instrument: _Optional[str] = ..., channel: _Optional[_Union[Channel, str]] = ..., sequence: _Optional[int] = ..., exchange_time: _Optional[int] = ..., receive_time: _Optional[int] = ..., publish_time: _Optional[int] = ..., venue_seq: _Optional[int] = ..., snapshot: _Optional[_Union[BookSnapshot, _Mapping]] = ..., delta: _Optional[_Union[BookDelta, _Mapping]] = ..., trade: _Optional[_Union[Trade, _Mapping]] = ..., bbo: _Optional[_Union[Bbo, _Mapping]] = ..., candle: _Optional[_Union[Candle, _Mapping]] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., snapshot_end: _Optional[_Union[SnapshotEnd, _Mapping]] = ..., heartbeat_ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ..., history_end: _Optional[_Union[HistoryEnd, _Mapping]] = ...) -> None: ...

class BookSnapshot(_message.Message):
    __slots__ = ("bids", "asks", "resync", "checkpoint")
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    bids: _containers.RepeatedCompositeFieldContainer[Level]
    asks: _containers.RepeatedCompositeFieldContainer[Level]
    resync: bool
    checkpoint: bool
    def __init__(self, bids: _Optional[_Iterable[_Union[Level, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[Level, _Mapping]]] = ..., resync: _Optional[bool] = ..., checkpoint: _Optional[bool] = ...) -> None: ...

class BookDelta(_message.Message):
    __slots__ = ("bids", "asks")
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    bids: _containers.RepeatedCompositeFieldContainer[Level]
    asks: _containers.RepeatedCompositeFieldContainer[Level]
    def __init__(self, bids: _Optional[_Iterable[_Union[Level, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[Level, _Mapping]]] = ...) -> None: ...

class Trade(_message.Message):
    __slots__ = ("price", "qty", "qty_hi", "aggressor", "trade_id")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QTY_FIELD_NUMBER: _ClassVar[int]
    QTY_HI_FIELD_NUMBER: _ClassVar[int]
    AGGRESSOR_FIELD_NUMBER: _ClassVar[int]
    TRADE_ID_FIELD_NUMBER: _ClassVar[int]
    price: int
    qty: int
    qty_hi: int
    aggressor: Aggressor
    trade_id: str
    def __init__(self, price: _Optional[int] = ..., qty: _Optional[int] = ..., qty_hi: _Optional[int] = ..., aggressor: _Optional[_Union[Aggressor, str]] = ..., trade_id: _Optional[str] = ...) -> None: ...

class Bbo(_message.Message):
    __slots__ = ("bid", "ask")
    BID_FIELD_NUMBER: _ClassVar[int]
    ASK_FIELD_NUMBER: _ClassVar[int]
    bid: Level
    ask: Level
    def __init__(self, bid: _Optional[_Union[Level, _Mapping]] = ..., ask: _Optional[_Union[Level, _Mapping]] = ...) -> None: ...

class Candle(_message.Message):
    __slots__ = ("interval", "open_time", "open", "high", "low", "close", "volume", "volume_hi", "trades")
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    OPEN_TIME_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    VOLUME_HI_FIELD_NUMBER: _ClassVar[int]
    TRADES_FIELD_NUMBER: _ClassVar[int]
    interval: CandleInterval
    open_time: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    volume_hi: int
    trades: int
    def __init__(self, interval: _Optional[_Union[CandleInterval, str]] = ..., open_time: _Optional[int] = ..., open: _Optional[int] = ..., high: _Optional[int] = ..., low: _Optional[int] = ..., close: _Optional[int] = ..., volume: _Optional[int] = ..., volume_hi: _Optional[int] = ..., trades: _Optional[int] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("kind", "missed", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: StatusKind
    missed: int
    detail: str
    def __init__(self, kind: _Optional[_Union[StatusKind, str]] = ..., missed: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class SnapshotEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HistoryEnd(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("id", "server_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    id: int
    server_time: int
    def __init__(self, id: _Optional[int] = ..., server_time: _Optional[int] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[FeedEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[FeedEvent, _Mapping]]] = ...) -> None: ...

class FeedEvent(_message.Message):
    __slots__ = ("instrument", "exchange_time", "receive_time", "venue_seq", "snapshot", "delta", "trade")
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_TIME_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    VENUE_SEQ_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TRADE_FIELD_NUMBER: _ClassVar[int]
    instrument: str
    exchange_time: int
    receive_time: int
    venue_seq: int
    snapshot: BookSnapshot
    delta: BookDelta
    trade: Trade
    def __init__(self, instrument: _Optional[str] = ..., exchange_time: _Optional[int] = ..., receive_time: _Optional[int] = ..., venue_seq: _Optional[int] = ..., snapshot: _Optional[_Union[BookSnapshot, _Mapping]] = ..., delta: _Optional[_Union[BookDelta, _Mapping]] = ..., trade: _Optional[_Union[Trade, _Mapping]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class GetSnapshotRequest(_message.Message):
    __slots__ = ("instrument", "depth")
    INSTRUMENT_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    instrument: str
    depth: int
    def __init__(self, instrument: _Optional[str] = ..., depth: _Optional[int] = ...) -> None: ...

class ListInstrumentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListInstrumentsResponse(_message.Message):
    __slots__ = ("instruments",)
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    instruments: _containers.RepeatedCompositeFieldContainer[Instrument]
    def __init__(self, instruments: _Optional[_Iterable[_Union[Instrument, _Mapping]]] = ...) -> None: ...

class Instrument(_message.Message):
    __slots__ = ("name", "venue", "symbol", "tick_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VENUE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    TICK_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    venue: str
    symbol: str
    tick_size: int
    def __init__(self, name: _Optional[str] = ..., venue: _Optional[str] = ..., symbol: _Optional[str] = ..., tick_size: _Optional[int] = ...) -> None: ...
