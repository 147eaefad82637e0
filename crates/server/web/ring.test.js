// node --test crates/server/web/: the chart's ring of points.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Ring } from "./ring.js";

const rows = (ring) =>
  Array.from({ length: ring.length }, (_, i) => Array.from({ length: ring.width }, (_, c) => ring.at(i, c)));

test("a full ring drops its oldest row for each new one", () => {
  const ring = new Ring(3, 2);
  for (let t = 1; t <= 5; t++) ring.push(t, t * 10);
  assert.deepEqual(rows(ring), [[3, 30], [4, 40], [5, 50]]);
  assert.equal(ring.values.length, 6, "no more room than at the start");
});

test("rows older than a time go, oldest first, and clear empties it", () => {
  const ring = new Ring(4, 1);
  for (const t of [1, 2, 3, 4, 5, 6]) ring.push(t);
  ring.dropBefore(5);
  assert.deepEqual(rows(ring), [[5], [6]]);
  ring.push(7);
  assert.deepEqual(rows(ring), [[5], [6], [7]]);
  ring.dropBefore(100);
  assert.equal(ring.length, 0);
  ring.push(8);
  ring.clear();
  assert.deepEqual(rows(ring), []);
});
