// node --test crates/server/web/: the book module on the events the server sends.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Book, units } from "./book.js";

const head = (sequence) => ({
  instrument: "SIM:BTC-USD",
  channel: "book",
  sequence: String(sequence),
  exchange_time: "1796000000000000000",
  receive_time: "1796000000000000001",
  publish_time: "1796000000000000002",
});
const snapshot = (sequence, bids, asks, resync = false) => ({ ...head(sequence), type: "snapshot", resync, bids, asks });
const delta = (sequence, bids, asks) => ({ ...head(sequence), type: "delta", bids, asks });

test("decimal strings are exact BigInt counts of 1e-9", () => {
  assert.equal(units("60000.01"), 60000010000000n);
  assert.equal(units("-0.000000001"), -1n);
  assert.equal(units("9223372036.854775807"), 9223372036854775807n);
  assert.equal(units("99999999999999999999999999999.999999999"), 10n ** 38n - 1n);
  assert.throws(() => units("1e5"), /not a decimal/);
  assert.throws(() => units("0.0000000001"), /not a decimal/);
});

test("a snapshot then deltas in sequence keep the book, best first", () => {
  const book = new Book("SIM:BTC-USD");
  assert.deepEqual(book.apply(snapshot(5, [["99.5", "1"], ["100", "2"]], [["101", "3"], ["100.25", "4"]])), { changed: true });
  assert.deepEqual(book.bids(), [["100", "2"], ["99.5", "1"]]);
  assert.deepEqual(book.asks(), [["100.25", "4"], ["101", "3"]]);
  assert.deepEqual(book.apply(delta(6, [["100", "0"], ["99.75", "5"]], [])), { changed: true });
  assert.deepEqual(book.bids(), [["99.75", "5"], ["99.5", "1"]]);
  assert.deepEqual(book.bids(1), [["99.75", "5"]]);
  assert.equal(book.sequence, 6n);
  // Seen already: ignored.
  assert.deepEqual(book.apply(delta(6, [["1", "1"]], [])), { changed: false });
  // Another instrument's: ignored.
  assert.deepEqual(book.apply({ ...delta(7, [["1", "1"]], []), instrument: "SIM:ETH-USD" }), { changed: false });
  // Ten digits of integer part sort numerically, not as text.
  book.apply(delta(7, [["1000", "1"]], []));
  assert.deepEqual(book.bids(1), [["1000", "1"]]);
});

test("a resync status waits for the resync snapshot", () => {
  const book = new Book("SIM:BTC-USD");
  book.apply(snapshot(1, [["10", "1"]], [["11", "1"]]));
  assert.deepEqual(book.apply({ ...head(1), type: "status", kind: "resync", missed: "0", detail: "lagged" }), { changed: false });
  assert.equal(book.synced, false);
  assert.deepEqual(book.apply(delta(9, [["12", "1"]], [])), { changed: false });
  assert.deepEqual(book.apply(snapshot(9, [["9", "2"]], [["13", "1"]], true)), { changed: true });
  assert.equal(book.synced, true);
  assert.deepEqual(book.bids(), [["9", "2"]]);
  assert.deepEqual(book.apply(delta(10, [], [["13", "0"]])), { changed: true });
  assert.deepEqual(book.asks(), []);
});

test("a sequence gap asks for a new subscription", () => {
  const book = new Book("SIM:BTC-USD");
  book.apply(snapshot(3, [["10", "1"]], []));
  assert.deepEqual(book.apply(delta(5, [["11", "1"]], [])), { changed: false, resubscribe: true });
  assert.equal(book.synced, false);
  assert.deepEqual(book.bids(), [["10", "1"]]);
  // Until a snapshot comes, deltas change nothing.
  assert.deepEqual(book.apply(delta(6, [["12", "1"]], [])), { changed: false });
});
