"""raven-md: the Python client of the Raven market-data server.

    from raven_md import Client
    client = Client("127.0.0.1:50051")
    book = client.snapshot("SIM:BTC-USD", depth=10)
    trades = client.history("SIM:BTC-USD", "trades", start=an_hour_ago).to_polars()

Prices and quantities are the server's exact integers in units of 10⁻⁹ (``price``,
``qty``), with ``price_decimal``/``qty_decimal`` as :class:`decimal.Decimal`; in Arrow,
pandas, polars and Parquet they are ``decimal128(38, 9)``. Times are integer nanoseconds
since the Unix epoch (``timestamp[ns, UTC]`` in tables).
"""

from raven_md.book import BookBuilder
from raven_md.client import AsyncClient, AsyncHistory, Client, History, Query, Subscription, Tls
from raven_md.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    GapError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    RavenError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from raven_md.events import (
    CHANNELS,
    Bbo,
    BookDelta,
    BookSnapshot,
    Candle,
    Event,
    HistoryEnd,
    Instrument,
    Level,
    SnapshotEnd,
    Status,
    Trade,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "History",
    "AsyncHistory",
    "Query",
    "Subscription",
    "Tls",
    "BookBuilder",
    "CHANNELS",
    "Event",
    "Level",
    "BookSnapshot",
    "BookDelta",
    "Trade",
    "Bbo",
    "Candle",
    "Status",
    "SnapshotEnd",
    "HistoryEnd",
    "Instrument",
    "RavenError",
    "GapError",
    "Cancelled",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
]
