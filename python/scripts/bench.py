"""The SDK's throughput against a running server (figures for BENCHMARKS.md):

    python python/scripts/bench.py history SERVER [--to NS]
        every SIM instrument's recorded events (up to --to, Unix ns) through
        history().tables(): events per second from the call to the last table.
    python python/scripts/bench.py subscribe SERVER [--seconds 10]
        the book channel of every SIM instrument, live, as typed events applied to
        BookBuilders: events per second, and gaps (there must be none).
"""

import argparse
import time

from raven_md import BookBuilder, Client, GapError, Status


def sim_instruments(client):
    return [i.name for i in client.instruments() if i.venue == "SIM"]


def history(client, to):
    instruments = sim_instruments(client)
    began = time.perf_counter()
    tables = client.history(instruments, end=to or None).tables()
    elapsed = time.perf_counter() - began
    rows = sum(t.num_rows for t in tables.values())
    events = len(client.history(instruments, end=to or None))  # counted apart, untimed
    print(
        f"history: {events} events ({rows} rows) of {len(instruments)} instruments to Arrow in "
        f"{elapsed:.2f} s: {events / elapsed:,.0f} events/s end to end"
    )


def subscribe(client, seconds):
    instruments = sim_instruments(client)
    books = {name: BookBuilder(name) for name in instruments}
    events = gaps = resyncs = 0
    with client.subscribe(instruments, "book") as stream:
        began = None
        for event in stream:
            if began is None:
                began = time.perf_counter()
            if isinstance(event, Status):
                resyncs += event.kind == "resync"
            try:
                books[event.instrument].apply(event)
            except GapError:
                gaps += 1
            events += 1
            if events % 1000 == 0 and time.perf_counter() - began > seconds:
                break
    elapsed = time.perf_counter() - began
    print(
        f"subscribe: {events} book events of {len(instruments)} instruments in {elapsed:.2f} s: "
        f"{events / elapsed:,.0f} events/s, {gaps} gaps, {resyncs} resyncs"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["history", "subscribe"])
    parser.add_argument("server")
    parser.add_argument("--to", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with Client(args.server) as client:
        if args.what == "history":
            history(client, args.to)
        else:
            subscribe(client, args.seconds)


if __name__ == "__main__":
    main()
