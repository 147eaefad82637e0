"""Interop check with the stock Python gRPC stack (grpcio), stubs generated from
crates/proto/proto/raven/v1/raven.proto. Run by tests/interop.rs against a live server:

    python interop.py 127.0.0.1:PORT

Subscribes to three books, rebuilds them from snapshot + deltas (checking sequences are
contiguous and books never cross), and compares each with GetSnapshot at the same
sequence. Exits non-zero with a message on any mismatch.
"""

import queue
import sys
import time

import grpc

from raven.v1 import raven_pb2 as pb
from raven.v1 import raven_pb2_grpc as rpc


def qty(level):
    return level.qty | (level.qty_hi << 64)


def side(levels):
    return {l.price: qty(l) for l in levels}


def main(addr):
    channel = grpc.insecure_channel(addr)
    stub = rpc.MarketStub(channel)
    names = [i.name for i in stub.ListInstruments(pb.ListInstrumentsRequest()).instruments]
    assert len(names) == 8, names
    watched = names[:3]

    try:
        stub.GetSnapshot(pb.GetSnapshotRequest(instrument="SIM:NOPE"))
        raise AssertionError("unknown instrument accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()

    requests = queue.Queue()
    requests.put(pb.StreamRequest(subscribe=pb.Subscribe(instruments=watched, channel=pb.CHANNEL_BOOK)))
    stream = stub.Stream(iter(requests.get, None))

    books = {}  # name -> [sequence, bids, asks]
    targets = {}  # name -> GetSnapshot answer to reach
    matched = set()
    ends = events = 0
    deadline = time.monotonic() + 60

    def check(name):
        """Compares a book with its GetSnapshot target once the stream reaches it."""
        target, book = targets.get(name), books[name]
        if target is None:
            return
        if book[0] > target.sequence:
            # The stream moved past the target in one batch: take a newer one.
            targets[name] = stub.GetSnapshot(pb.GetSnapshotRequest(instrument=name))
            return check(name)
        if book[0] == target.sequence:
            assert book[1] == side(target.snapshot.bids), f"{name} bids differ"
            assert book[2] == side(target.snapshot.asks), f"{name} asks differ"
            matched.add(name)
            del targets[name]

    for response in stream:
        assert time.monotonic() < deadline, f"timed out: matched {sorted(matched)} after {events} events"
        for ev in response.events:
            kind = ev.WhichOneof("body")
            if kind == "snapshot_end":
                ends += 1
                continue
            events += 1
            if kind == "snapshot":
                books[ev.instrument] = [ev.sequence, side(ev.snapshot.bids), side(ev.snapshot.asks)]
            elif kind == "delta":
                book = books[ev.instrument]
                assert ev.sequence == book[0] + 1, f"{ev.instrument}: gap {book[0]} -> {ev.sequence}"
                book[0] = ev.sequence
                for levels, book_side in ((ev.delta.bids, book[1]), (ev.delta.asks, book[2])):
                    for l in levels:
                        if qty(l) == 0:
                            book_side.pop(l.price, None)
                        else:
                            book_side[l.price] = qty(l)
            else:
                raise AssertionError(f"unexpected {kind} on the book channel")
            book = books[ev.instrument]
            if book[1] and book[2]:
                assert max(book[1]) < min(book[2]), f"{ev.instrument} crossed"
            check(ev.instrument)
        if ends == len(watched):
            for name in watched:
                if name not in matched and name not in targets:
                    # The answer may equal the book we hold already: check at once.
                    targets[name] = stub.GetSnapshot(pb.GetSnapshotRequest(instrument=name))
                    check(name)
        if len(matched) == len(watched) and events >= 300:
            break
    requests.put(None)
    stream.cancel()
    print(f"interop OK: {events} events, {len(matched)} books equal GetSnapshot at the same sequence")


if __name__ == "__main__":
    main(sys.argv[1])
