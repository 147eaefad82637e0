// The chart's points: rows of `width` numbers (time first) in a ring allocated once, so
// that the page's memory does not grow while its ten-minute window fills. Pure: the page
// and its unit tests (ring.test.js, `node --test`) share it.

export class Ring {
  constructor(capacity, width) {
    this.values = new Float64Array(capacity * width);
    this.capacity = capacity;
    this.width = width;
    this.start = 0;
    this.length = 0;
  }

  clear() {
    this.start = 0;
    this.length = 0;
  }

  push(...row) {
    if (this.length === this.capacity) {
      this.start = (this.start + 1) % this.capacity;
      this.length--;
    }
    const at = ((this.start + this.length) % this.capacity) * this.width;
    this.values.set(row, at);
    this.length++;
  }

  /** Drops the rows older than `time`. */
  dropBefore(time) {
    while (this.length && this.values[this.start * this.width] < time) {
      this.start = (this.start + 1) % this.capacity;
      this.length--;
    }
  }

  /** The value `column` of the `i`-th row, oldest first. */
  at(i, column) {
    return this.values[((this.start + i) % this.capacity) * this.width + column];
  }
}
