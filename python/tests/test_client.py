"""Every call of the SDK against a live server (see conftest.py)."""

import asyncio
import csv
import os
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import grpc
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import raven_md
from raven_md import (
    AsyncClient,
    BookBuilder,
    BookDelta,
    BookSnapshot,
    Client,
    GapError,
    HistoryEnd,
    NotFound,
    OutOfRange,
    Query,
    SnapshotEnd,
    Status,
    Tls,
    Trade,
    Unauthenticated,
)
from raven_md._pb.raven.v1 import raven_pb2 as pb
from raven_md._pb.raven.v1 import raven_pb2_grpc as rpc
from raven_md.events import text

# Names of this run's own, so that a test run against a long-lived server starts clean.
_RUN = f"{os.getpid()}-{time.time_ns() % 10**9}"
EXTREME = f"TEST:PYEXTREME-{_RUN}"
HUGE = f"TEST:PYHUGE-{_RUN}"
BIG_QTY = (1 << 64) + 7
I64_MAX = (1 << 63) - 1
DEADLINE = 60


def now_ns():
    return time.time_ns()


def level(price, qty):
    return pb.Level(price=price, qty=qty & ((1 << 64) - 1), qty_hi=qty >> 64)


def trade(instrument, i, price, qty, aggressor):
    return pb.FeedEvent(
        instrument=instrument,
        exchange_time=1_700_000_000_000_000_000 + i,
        trade=pb.Trade(
            price=price,
            qty=qty & ((1 << 64) - 1),
            qty_hi=qty >> 64,
            aggressor=aggressor,
            trade_id=f"py,{i}\"",
        ),
    )


@pytest.fixture(scope="session")
def published(server):
    """Extremes published through Ingest.Publish: an i64::MAX price and a quantity above
    2**64 (EXTREME), and a quantity decimal128(38, 9) cannot hold (HUGE)."""
    with grpc.insecure_channel(server) as channel:
        ingest = rpc.IngestStub(channel)
        events = [
            pb.FeedEvent(
                instrument=EXTREME,
                exchange_time=1_700_000_000_000_000_000,
                snapshot=pb.BookSnapshot(bids=[level(1, 1), level(-5, 3)], asks=[level(I64_MAX, BIG_QTY)]),
            ),
            pb.FeedEvent(
                instrument=EXTREME,
                exchange_time=1_700_000_000_000_000_001,
                delta=pb.BookDelta(bids=[level(1, 0)], asks=[level(I64_MAX - 1, 10**38 - 1)]),
            ),
            trade(EXTREME, 2, I64_MAX, BIG_QTY, pb.AGGRESSOR_BUY),
            trade(EXTREME, 3, -1, 1, pb.AGGRESSOR_UNSPECIFIED),
        ]
        assert ingest.Publish(iter([pb.PublishRequest(events=events)])).accepted == 4
        huge = [trade(HUGE, 0, 1, 10**38, pb.AGGRESSOR_SELL)]
        assert ingest.Publish(iter([pb.PublishRequest(events=huge)])).accepted == 1
    # Recorded within the 5 ms window; wait until history has them.
    with Client(server) as c:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                if len(c.history([EXTREME, HUGE], "trades")) == 3:
                    break
            except NotFound:
                pass  # not recorded yet
            assert time.monotonic() < deadline, "the published trades were never recorded"
            time.sleep(0.05)
    return True


def test_instruments_and_snapshot(client):
    names = {i.name: i for i in client.instruments()}
    assert "SIM:BTC-USD" in names
    btc = names["SIM:BTC-USD"]
    assert (btc.venue, btc.symbol) == ("SIM", "BTC-USD")
    assert btc.tick_size > 0
    book = client.snapshot("SIM:BTC-USD", depth=5)
    assert isinstance(book, BookSnapshot)
    assert book.instrument == "SIM:BTC-USD" and book.channel == "book"
    assert 1 <= len(book.bids) <= 5 and 1 <= len(book.asks) <= 5
    assert [b.price for b in book.bids] == sorted((b.price for b in book.bids), reverse=True)
    assert [a.price for a in book.asks] == sorted(a.price for a in book.asks)
    assert book.bids[0].price < book.asks[0].price
    assert book.bids[0].price_decimal == Decimal(book.bids[0].price).scaleb(-9)
    ladder = str(book).splitlines()
    assert ladder[0] == f"SIM:BTC-USD at sequence {book.sequence}"
    assert ladder[1].split() == [text(book.bids[0].qty), text(book.bids[0].price), "|", text(book.asks[0].price), text(book.asks[0].qty)]
    assert text(10**38 - 1) == "99999999999999999999999999999.999999999"
    assert text(-5) == "-0.000000005" and text(60000 * 10**9) == "60000"


def test_book_builder_equals_get_snapshot_at_the_same_sequence(client):
    watched = ["SIM:BTC-USD", "SIM:ETH-USD", "SIM:SOL-USD"]
    builders = {name: BookBuilder(name) for name in watched}
    targets = {}
    matched = set()
    deadline = time.monotonic() + DEADLINE
    with client.subscribe(watched, "book") as sub:
        for event in sub:
            assert time.monotonic() < deadline, f"matched only {sorted(matched)}"
            if isinstance(event, SnapshotEnd):
                continue
            builder = builders[event.instrument]
            builder.apply(event)
            name = event.instrument
            if name in matched or not builder.synced:
                continue
            target = targets.get(name)
            if target is None or builder.sequence > target.sequence:
                # Asked now, the snapshot is at or after what the stream has shown.
                targets[name] = client.snapshot(name)
                continue
            if builder.sequence == target.sequence:
                assert builder.bids() == target.bids, name
                assert builder.asks() == target.asks, name
                matched.add(name)
                if matched == set(watched):
                    break
    assert matched == set(watched)


def test_times_are_exact_nanoseconds():
    from raven_md.client import _nanos

    assert _nanos(datetime(2026, 11, 28, 5, 0, 0, 999999, tzinfo=timezone.utc), "t") == 1_795_842_000_999_999_000
    assert _nanos(datetime(2026, 11, 28, 6, 0, tzinfo=timezone(timedelta(hours=1))), "t") == 1_795_842_000_000_000_000
    assert _nanos(1_795_842_000_000_000_001, "t") == 1_795_842_000_000_000_001
    with pytest.raises(ValueError, match="before the Unix epoch"):
        _nanos(-1, "t")
    with pytest.raises(ValueError, match="before the Unix epoch"):
        _nanos(datetime(1969, 12, 31, 23, 59, 59, tzinfo=timezone.utc), "t")


def test_book_builder_refuses_a_gap_and_waits_through_a_resync():
    head = dict(instrument="X:Y", channel="book", exchange_time=0, receive_time=0, publish_time=0, venue_seq=0)
    b = BookBuilder()
    assert b.apply(BookSnapshot(sequence=5, bids=[raven_md.Level(10, 1)], asks=[raven_md.Level(12, 2)], **head))
    assert b.apply(BookDelta(sequence=6, bids=[raven_md.Level(10, 0), raven_md.Level(11, 4)], **head))
    assert b.bids() == [raven_md.Level(11, 4)] and b.sequence == 6
    assert not b.apply(BookDelta(sequence=6, bids=[raven_md.Level(9, 9)], **head))  # seen
    b.apply(Status(sequence=6, kind="resync", **head))
    assert not b.synced
    assert not b.apply(BookDelta(sequence=9, **head))  # waiting for the resync snapshot
    assert b.apply(BookSnapshot(sequence=9, resync=True, asks=[raven_md.Level(13, 1)], **head))
    assert b.synced and b.bids() == [] and b.best_ask() == raven_md.Level(13, 1)
    with pytest.raises(GapError, match="jumped from 9 to 11"):
        b.apply(BookDelta(sequence=11, **head))


def test_subscribe_with_start_has_no_gap_and_no_duplicate(client):
    time.sleep(1.0)
    start = datetime.now(timezone.utc) - timedelta(milliseconds=800)
    sequences = []
    recorded = None
    deadline = time.monotonic() + DEADLINE
    with client.subscribe("SIM:BTC-USD", "trades", start=start) as sub:
        for event in sub:
            assert time.monotonic() < deadline
            if isinstance(event, HistoryEnd):
                recorded = len(sequences)
                continue
            if isinstance(event, Trade):
                sequences.append(event.sequence)
            if recorded is not None and len(sequences) >= recorded + 50:
                break
    assert recorded is not None and recorded > 0, "nothing recorded since the start"
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))


def units(d):
    """Exact units of 10⁻⁹ of a decimal128(38, 9) value."""
    sign, digits, exponent = d.as_tuple()
    n = int("".join(map(str, digits))) * 10 ** (exponent + 9)
    return -n if sign else n


def csv_rows(table, channel):
    """An Arrow table's rows as the CLI's CSV rows for the same events."""
    out = []
    for r in table.to_pylist():
        ns = lambda name: str(int(pa.scalar(r[name], pa.timestamp("ns", tz="UTC")).value))  # noqa: E731
        head = [r["instrument"], channel, str(r["sequence"]), ns("exchange_time"), ns("receive_time"), ns("publish_time")]
        dec = lambda name: "" if r[name] is None else text(units(r[name]))  # noqa: E731
        if r["status"] is not None:
            out.append(head + ["status", "", "", "", r["detail"]])
        elif channel == "trades":
            out.append(head + ["trade", r["aggressor"] or "", dec("price"), dec("qty"), r["trade_id"]])
        elif channel == "book":
            if r["side"] is None:
                continue
            kind = ("resync" if r["resync"] else "snapshot") if r["is_snapshot"] else "delta"
            out.append(head + [kind, r["side"], dec("price"), dec("qty"), ""])
        elif channel == "bbo":
            for side in ("bid", "ask"):
                price = dec(f"{side}_price")
                out.append(head + ["bbo", side, price, dec(f"{side}_qty"), "" if price else "empty"])
        elif channel == "candles":
            detail = (
                f"interval={r['interval']};open_time={int(pa.scalar(r['open_time'], pa.timestamp('ns', tz='UTC')).value)};"
                f"open={dec('open')};high={dec('high')};low={dec('low')};trades={r['trades']}"
            )
            out.append(head + ["candle", "", dec("close"), dec("volume"), detail])
    return out


def cli(raven_bin, server, *args):
    done = subprocess.run(
        [raven_bin, *args, "--server", f"http://{server}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


def test_history_to_arrow_equals_the_cli_csv_value_for_value(client, server, raven_bin, scratch, published):
    end = now_ns()
    time.sleep(0.2)
    instruments = ["SIM:BTC-USD", EXTREME]
    history = client.history(instruments, end=end)
    path = scratch / "history.csv"
    cli(raven_bin, server, "history", *instruments, "--to", str(end), "--format", "csv", "--out", str(path))
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    for channel in raven_md.CHANNELS:
        want = [row for row in rows if row[1] == channel]
        got = csv_rows(history.to_arrow(channel), channel)
        assert want, f"no {channel} rows"
        assert got == want, channel
    trades = history.to_arrow("trades").filter(pa.compute.equal(history.to_arrow("trades")["instrument"], EXTREME))
    assert trades["price"].to_pylist() == [Decimal(I64_MAX).scaleb(-9), Decimal(-1).scaleb(-9)]
    assert trades["qty"].to_pylist() == [Decimal(BIG_QTY).scaleb(-9), Decimal(1).scaleb(-9)]
    assert trades["aggressor"].to_pylist() == ["buy", None]
    typed = [e for e in client.history(EXTREME, "trades") if isinstance(e, Trade)]
    assert [(t.price, t.qty, t.aggressor) for t in typed] == [(I64_MAX, BIG_QTY, "buy"), (-1, 1, None)]
    assert typed[0].price_decimal == Decimal("9223372036.854775807")
    assert typed[0].qty_decimal == Decimal("18446744073.709551623")
    delta = [e for e in client.history(EXTREME, "book") if isinstance(e, BookDelta)][0]
    assert delta.asks[0].qty == 10**38 - 1
    assert delta.asks[0].qty_decimal == Decimal("99999999999999999999999999999.999999999")
    # pandas with Arrow-backed columns, polars with exact decimals.
    frame = history.to_pandas("trades")
    assert str(frame["price"].dtype) == "decimal128(38, 9)[pyarrow]"
    assert str(frame["publish_time"].dtype) == "timestamp[ns, tz=UTC][pyarrow]"
    polars = history.to_polars("trades")
    assert polars.schema["price"] == pl.Decimal(38, 9)
    assert polars.filter(pl.col("instrument") == EXTREME)["price"].to_list()[0] == Decimal(I64_MAX).scaleb(-9)


def test_parquet_from_the_cli_and_the_sdk_read_back_equal(client, server, raven_bin, scratch, published):
    end = now_ns()
    time.sleep(0.2)
    instruments = ["SIM:BTC-USD", EXTREME]
    cli_prefix = scratch / "cli"
    cli(raven_bin, server, "history", *instruments, "--to", str(end), "--format", "parquet", "--out", str(cli_prefix))
    written = client.history(instruments, end=end).to_parquet(scratch / "sdk.parquet")
    assert [p.name for p in written] == [f"sdk.{c}.parquet" for c in raven_md.CHANNELS]
    for channel in raven_md.CHANNELS:
        from_cli = pq.read_table(scratch / f"cli.{channel}.parquet")
        from_sdk = pq.read_table(scratch / f"sdk.{channel}.parquet")
        assert from_cli.schema == from_sdk.schema, channel
        assert from_cli.schema == raven_md.table.schema(channel), channel
        assert from_cli.num_rows > 0
        assert from_cli.equals(from_sdk), channel
        assert pl.read_parquet(scratch / f"cli.{channel}.parquet").equals(
            pl.read_parquet(scratch / f"sdk.{channel}.parquet")
        ), channel
    # One channel: the path itself.
    single = client.history(EXTREME, "trades").to_parquet(scratch / "one.parquet")
    assert single == [scratch / "one.parquet"]
    assert pq.read_table(single[0]).num_rows == 2


def test_book_at_equals_the_history_applied_up_to_that_instant(client, published):
    events = list(client.history("SIM:ETH-USD", "book"))
    assert len(events) > 20
    at = events[len(events) // 2].publish_time
    builder = BookBuilder("SIM:ETH-USD")
    for e in events:
        if e.publish_time > at:
            break
        builder.apply(e)
    book = client.book_at("SIM:ETH-USD", at)
    assert book.sequence == builder.sequence
    assert book.bids == builder.bids() and book.asks == builder.asks()
    top = client.book_at("SIM:ETH-USD", datetime.fromtimestamp(at // 10**9, timezone.utc) + timedelta(
        microseconds=(at % 10**9) // 1000), depth=2)
    assert len(top.bids) <= 2 and len(top.asks) <= 2


def test_candles_carry_their_exact_decimals(client):
    deadline = time.monotonic() + DEADLINE
    while True:
        candles = [e for e in client.history("SIM:BTC-USD", "candles") if isinstance(e, raven_md.Candle)]
        if candles:
            break
        assert time.monotonic() < deadline, "no candle recorded"
        time.sleep(0.1)
    c = candles[0]
    assert c.interval in ("1s", "1m")
    assert c.low <= c.open <= c.high and c.low <= c.close <= c.high and c.trades > 0
    assert (c.open_decimal, c.high_decimal, c.low_decimal, c.close_decimal, c.volume_decimal) == tuple(
        Decimal(text(v)) for v in (c.open, c.high, c.low, c.close, c.volume)
    )


def test_replay_as_fast_as_read_equals_the_history(client):
    end = now_ns()
    query = Query("SIM:BTC-USD", "trades", end=end, limit=200)
    replayed = list(client.replay(query, speed=0))
    assert len(replayed) == 200
    assert replayed == client.history("SIM:BTC-USD", "trades", end=end, limit=200).events


def test_async_client_makes_the_same_calls(server):
    async def run():
        async with AsyncClient(server) as c:
            names = [i.name for i in await c.instruments()]
            assert "SIM:BTC-USD" in names
            book = await c.snapshot("SIM:BTC-USD", depth=3)
            assert len(book.bids) == 3
            trades = []
            async for event in c.subscribe("SIM:BTC-USD", "trades"):
                if isinstance(event, Trade):
                    trades.append(event.sequence)
                if len(trades) == 20:
                    break
            assert trades == list(range(trades[0], trades[0] + 20))
            end = now_ns()
            history = c.history("SIM:BTC-USD", "trades", end=end, limit=50)
            replayed = [e async for e in c.replay(Query("SIM:BTC-USD", "trades", end=end, limit=50), speed=0)]
            assert replayed == await history.events() and len(replayed) == 50
            assert [e async for e in history] == replayed
            trades = await history.to_arrow()
            assert trades["sequence"].to_pylist() == [e.sequence for e in replayed]
            assert (await history.to_polars())["sequence"].to_list() == [e.sequence for e in replayed]
            at = await c.book_at("SIM:BTC-USD", end, depth=1)
            assert len(at.bids) == 1
            with pytest.raises(NotFound, match="SIM:NOPE"):
                await c.snapshot("SIM:NOPE")

    asyncio.run(run())


def test_bad_input_is_refused_clearly(client, published):
    with pytest.raises(NotFound, match='unknown instrument "SIM:NOPE"') as caught:
        client.snapshot("SIM:NOPE")
    assert caught.value.code == "NOT_FOUND"
    # Refused before any call: nothing listens on this client's port.
    nowhere = Client("127.0.0.1:9")
    with pytest.raises(ValueError, match="unknown channel 'quotes'"):
        nowhere.subscribe("SIM:BTC-USD", "quotes")
    with pytest.raises(ValueError, match="unknown channel 'quotes'"):
        nowhere.history("SIM:BTC-USD", ["trades", "quotes"])
    with pytest.raises(ValueError, match="naive datetime"):
        nowhere.history("SIM:BTC-USD", "trades", start=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive datetime"):
        nowhere.book_at("SIM:BTC-USD", datetime(2026, 1, 1))

    async def refused_by_the_async_client():
        async with AsyncClient("127.0.0.1:9") as c:
            with pytest.raises(ValueError, match="naive datetime"):
                c.subscribe("SIM:BTC-USD", "trades", start=datetime(2026, 1, 1))
            with pytest.raises(ValueError, match="unknown channel 'quotes'"):
                c.history("SIM:BTC-USD", "quotes")

    asyncio.run(refused_by_the_async_client())
    # A quantity decimal128(38, 9) cannot hold stops the conversion, naming the event.
    history = client.history(HUGE, "trades")
    with pytest.raises(OutOfRange, match=f"{HUGE} sequence 1: quantity of {10**38} units"):
        history.to_arrow()
    # Typed events still carry it exactly.
    assert [e.qty for e in history if isinstance(e, Trade)] == [10**38]
    # Several channels: say which.
    with pytest.raises(ValueError, match="pass channel="):
        client.history(EXTREME).to_arrow()


def test_api_keys_and_mutual_tls():
    """A server taking only mutual TLS and API keys (the Rust test starts it)."""
    server = os.environ.get("RAVEN_SECURE_SERVER")
    if not server:
        pytest.skip("RAVEN_SECURE_SERVER is not set")
    key = os.environ["RAVEN_KEY"]
    tls = Tls(ca=os.environ["RAVEN_CA"], cert=os.environ["RAVEN_CLIENT_CERT"], key=os.environ["RAVEN_CLIENT_KEY"])
    with Client(server, key=key, tls=tls) as c:
        assert "SIM:BTC-USD" in [i.name for i in c.instruments()]
        assert c.snapshot("SIM:BTC-USD", depth=1).bids
    with Client(f"https://{server}", key=key, tls=tls) as c:
        assert len(c.snapshot("SIM:ETH-USD", depth=2).asks) == 2
    with Client(server, tls=tls) as c:
        with pytest.raises(Unauthenticated, match="an API key is required"):
            c.instruments()
    with Client(server, key="rvn_" + "0" * 64, tls=tls) as c:
        with pytest.raises(Unauthenticated):
            c.snapshot("SIM:BTC-USD")

    async def run():
        async with AsyncClient(server, key=key, tls=tls) as c:
            assert "SIM:BTC-USD" in [i.name for i in await c.instruments()]

    asyncio.run(run())


def test_regenerating_the_stubs_changes_nothing():
    package = Path(raven_md.__file__).parent
    script = Path(os.environ.get("RAVEN_PYTHON_SOURCE", "")) / "scripts" / "gen.sh"
    if not script.exists():
        pytest.skip("RAVEN_PYTHON_SOURCE (the python/ directory of the repository) is not set")
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, OUT=out, PYTHON=os.environ.get("PYTHON", "python"))
        subprocess.run(["bash", str(script)], env=env, check=True, timeout=120)
        source = Path(os.environ["RAVEN_PYTHON_SOURCE"]) / "src" / "raven_md" / "_pb"
        generated = sorted(p.relative_to(out) for p in Path(out).rglob("*") if p.is_file())
        committed = sorted(
            p.relative_to(source) for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts
        )
        assert generated == committed
        for rel in generated:
            assert (Path(out) / rel).read_bytes() == (source / rel).read_bytes(), rel
        assert (package / "_pb" / "raven" / "v1" / "raven_pb2.py").read_bytes() == (
            source / "raven" / "v1" / "raven_pb2.py"
        ).read_bytes()
