// One instrument's book, kept from the JSON events of a book subscription (the objects
// `raven subscribe --json` prints and the WebSocket gateway sends). Pure: no DOM, no
// network; the page and its unit tests (book.test.js, `node --test`) share it.
//
// Prices and quantities arrive as exact decimal strings and sequences as decimal
// strings; they are compared as BigInt counts of 1e-9, never as floats.

const SCALE = 9n;

/** A decimal string ("-12.5", "0.000000001") as a BigInt count of 1e-9 units. */
export function units(text) {
  const match = /^(-?)(\d+)(?:\.(\d{1,9}))?$/.exec(text);
  if (!match) throw new Error(`not a decimal: ${JSON.stringify(text)}`);
  const [, sign, whole, fraction = ""] = match;
  const value = BigInt(whole) * 10n ** SCALE + BigInt(fraction.padEnd(Number(SCALE), "0"));
  return sign ? -value : value;
}

function sorted(side, descending) {
  const levels = [...side.entries()].map(([price, qty]) => [units(price), price, qty]);
  levels.sort((a, b) => (a[0] === b[0] ? 0 : (a[0] < b[0]) !== descending ? -1 : 1));
  return levels.map(([, price, qty]) => [price, qty]);
}

/**
 * The book of one instrument. `apply(event)` returns what the caller must do:
 * `{ changed }` after a snapshot or an applied delta; `{ resubscribe: true }` when a
 * delta's sequence skips ahead with no resync announced (the stream cannot repair it:
 * subscribe again). A `resync` status makes the book wait for the snapshot that follows.
 */
export class Book {
  constructor(instrument) {
    this.instrument = instrument;
    this.sequence = 0n;
    this.synced = false;
    this.bidLevels = new Map();
    this.askLevels = new Map();
  }

  apply(event) {
    if (event.instrument !== this.instrument) return { changed: false };
    const sequence = BigInt(event.sequence);
    switch (event.type) {
      case "snapshot":
        this.bidLevels = new Map(event.bids);
        this.askLevels = new Map(event.asks);
        this.sequence = sequence;
        this.synced = true;
        return { changed: true };
      case "status":
        if (event.kind === "resync") this.synced = false;
        return { changed: false };
      case "delta": {
        if (!this.synced || sequence <= this.sequence) return { changed: false };
        if (sequence !== this.sequence + 1n) {
          this.synced = false;
          return { changed: false, resubscribe: true };
        }
        for (const [side, levels] of [[this.bidLevels, event.bids], [this.askLevels, event.asks]]) {
          for (const [price, qty] of levels) {
            if (units(qty) === 0n) side.delete(price);
            else side.set(price, qty);
          }
        }
        this.sequence = sequence;
        return { changed: true };
      }
      default:
        return { changed: false };
    }
  }

  /** Bids, highest first: `[price, qty]` strings, `depth` of them (all when 0). */
  bids(depth = 0) {
    const levels = sorted(this.bidLevels, true);
    return depth ? levels.slice(0, depth) : levels;
  }

  /** Asks, lowest first. */
  asks(depth = 0) {
    const levels = sorted(this.askLevels, false);
    return depth ? levels.slice(0, depth) : levels;
  }
}
