// The dashboard: one instrument's ladder, trades tape and BBO chart from the WebSocket
// gateway (/ws), and the server's state from /api/v1/stats. The book is kept by book.js
// (shared with its unit tests); this module owns the connection and the DOM.
//
// Values are shown as the exact decimal strings the server sends; numbers are made of
// them only to size bars and place points on the chart.

import uPlot from "/web/vendor/uplot/uPlot.esm.js";
import { Book } from "/web/book.js";
import { Ring } from "/web/ring.js";

const DEPTH = 20;
const TAPE_ROWS = 200;
const CHART_WINDOW_S = 600;
const CHART_TRADES = 6000;
const SAMPLE_MS = 250;
const CHART_BBOS = (CHART_WINDOW_S * 1000) / SAMPLE_MS;
const STATS_MS = 2000;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 4000;

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem("raven-key") || "",
  ws: null,
  retryMs: RETRY_MIN_MS,
  nextId: 1,
  instrument: "",
  book: null,
  trades: [],
  bbo: null,
  bboSamples: new Ring(CHART_BBOS, 3),
  tradeSamples: new Ring(CHART_TRADES, 2),
  renderQueued: false,
  lastStats: null,
};

function headers() {
  return state.key ? { authorization: `Bearer ${state.key}` } : {};
}

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ id: state.nextId++, ...message }));
  }
}

function subscribe(instrument) {
  const instruments = [instrument];
  send({ op: "subscribe", instruments, channel: "book", depth: DEPTH, interval_ms: 100 });
  send({ op: "subscribe", instruments, channel: "trades" });
  send({ op: "subscribe", instruments, channel: "bbo" });
}

function unsubscribe(instrument) {
  for (const channel of ["book", "trades", "bbo"]) {
    send({ op: "unsubscribe", instruments: [instrument], channel });
  }
}

/** Switches the page to `instrument`: a new book, tape and chart. */
function show(instrument) {
  if (state.instrument) unsubscribe(state.instrument);
  state.instrument = instrument;
  state.book = new Book(instrument);
  state.trades = [];
  state.bbo = null;
  state.bboSamples.clear();
  state.tradeSamples.clear();
  if (instrument) subscribe(instrument);
  queueRender();
}

function askForKey(why) {
  $("login").hidden = false;
  $("login-error").textContent = why;
}

async function loadInstruments() {
  const response = await fetch("/api/v1/instruments", { headers: headers() });
  if (response.status === 401 || response.status === 403) {
    const { error } = await response.json();
    askForKey(error.message);
    throw new Error(error.message);
  }
  if (!response.ok) throw new Error(`instruments: HTTP ${response.status}`);
  const list = await response.json();
  const select = $("instrument");
  const current = select.value;
  select.replaceChildren(
    ...list.map(({ name }) => Object.assign(document.createElement("option"), { value: name, textContent: name })),
  );
  const names = list.map((i) => i.name);
  const wanted = names.includes(current) ? current : names.includes("SIM:BTC-USD") ? "SIM:BTC-USD" : names[0] || "";
  select.value = wanted;
  return wanted;
}

function setStatus(text) {
  $("status").textContent = text;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  state.ws = ws;
  ws.onopen = async () => {
    state.retryMs = RETRY_MIN_MS;
    $("banner").hidden = true;
    setStatus("connected");
    if (state.key) send({ op: "auth", key: state.key });
    try {
      const instrument = await loadInstruments();
      // Everything is subscribed again on a new connection.
      state.instrument = "";
      show(instrument);
    } catch (e) {
      setStatus(String(e));
    }
  };
  ws.onmessage = (message) => receive(JSON.parse(message.data));
  ws.onclose = (close) => {
    if (close.code === 4001) askForKey(close.reason);
    if (state.ws !== ws) return;
    state.ws = null;
    $("banner").hidden = false;
    setStatus("disconnected");
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, RETRY_MAX_MS);
  };
}

function receive(event) {
  switch (event.type) {
    case "ack":
    case "pong":
    case "snapshot_end":
      return;
    case "error":
      if (event.code === "UNAUTHENTICATED" || event.code === "PERMISSION_DENIED") {
        askForKey(event.message);
      } else {
        setStatus(`${event.code}: ${event.message}`);
      }
      return;
  }
  if (event.type === "status" && event.kind === "going_away") {
    setStatus("server going away");
    return;
  }
  if (event.instrument !== state.instrument) return;
  switch (event.channel) {
    case "book": {
      const { resubscribe } = state.book.apply(event);
      if (resubscribe) {
        send({ op: "subscribe", instruments: [state.instrument], channel: "book", depth: DEPTH, interval_ms: 100 });
      }
      break;
    }
    case "trades":
      if (event.type === "trade") {
        state.trades.unshift(event);
        if (state.trades.length > TAPE_ROWS) state.trades.length = TAPE_ROWS;
        state.tradeSamples.push(seconds(event.exchange_time), Number(event.price));
      }
      break;
    case "bbo":
      if (event.type === "bbo") state.bbo = event;
      break;
  }
  queueRender();
}

/** A nanosecond time (a decimal string) as seconds, for the chart's axis. */
function seconds(ns) {
  return Number(BigInt(ns) / 1000000n) / 1000;
}

function clock(ns) {
  return new Date(Number(BigInt(ns) / 1000000n)).toISOString().slice(11, 23);
}

function queueRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    renderLadder();
    renderTape();
  });
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function sizeCell(qty, max, className) {
  const td = cell("", className);
  if (qty === undefined) return td;
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.style.width = `${max > 0 ? (100 * Number(qty)) / max : 0}%`;
  const value = document.createElement("span");
  value.className = "value";
  value.textContent = qty;
  td.append(bar, value);
  return td;
}

function renderLadder() {
  const ladder = $("ladder");
  const book = state.book;
  if (!book || !book.synced) {
    ladder.tBodies[0].replaceChildren();
    ladder.dataset.seq = "";
    $("book-seq").textContent = "";
    return;
  }
  const bids = book.bids(DEPTH);
  const asks = book.asks(DEPTH);
  const max = Math.max(0, ...bids.map(([, q]) => Number(q)), ...asks.map(([, q]) => Number(q)));
  const rows = [];
  for (let i = 0; i < Math.max(bids.length, asks.length); i++) {
    const [bid, bidQty] = bids[i] || [];
    const [ask, askQty] = asks[i] || [];
    const tr = document.createElement("tr");
    tr.append(
      sizeCell(bidQty, max, "bid-size"),
      cell(bid ?? "", "bid"),
      cell(ask ?? "", "ask"),
      sizeCell(askQty, max, "ask-size"),
    );
    rows.push(tr);
  }
  ladder.tBodies[0].replaceChildren(...rows);
  if (!ladder.dataset.seq && !performance.getEntriesByName("raven-first-ladder").length) {
    // Time to the first ladder since navigation began, for anyone measuring the page.
    performance.mark("raven-first-ladder");
  }
  ladder.dataset.seq = book.sequence.toString();
  $("book-seq").textContent = `sequence ${book.sequence}`;
}

function renderTape() {
  const rows = state.trades.map((t) => {
    const tr = document.createElement("tr");
    tr.append(cell(clock(t.exchange_time)), cell(t.aggressor, t.aggressor), cell(t.price, t.aggressor), cell(t.qty));
    return tr;
  });
  $("tape").tBodies[0].replaceChildren(...rows);
  $("tape-count").textContent = `(last ${state.trades.length})`;
}

// The chart: BBO sampled every SAMPLE_MS, trades as dots, the last CHART_WINDOW_S (at
// most CHART_TRADES of them).
const chart = new uPlot(
  {
    width: Math.max(300, $("chart").clientWidth),
    height: 320,
    scales: { x: { time: true } },
    // Room for a full price on the y axis.
    axes: [{}, { size: 90 }],
    series: [
      {},
      { label: "bid", stroke: "#1a7f37", spanGaps: true, points: { show: false } },
      { label: "ask", stroke: "#cf222e", spanGaps: true, points: { show: false } },
      { label: "mid", stroke: "#6e7781", dash: [4, 4], spanGaps: true, points: { show: false } },
      { label: "trade", stroke: "#0969da", width: 0, paths: () => null, points: { show: true, size: 4, fill: "#0969da" } },
    ],
  },
  [[], [], [], [], []],
  $("chart"),
);

function sample() {
  const now = Date.now() / 1000;
  const from = now - CHART_WINDOW_S;
  const latest = state.bbo;
  if (latest && latest.bid && latest.ask) {
    state.bboSamples.push(now, Number(latest.bid.price), Number(latest.ask.price));
  }
  state.bboSamples.dropBefore(from);
  state.tradeSamples.dropBefore(from);
  // Both series on one time axis, in time order: a merge of the two rings.
  const bbo = state.bboSamples;
  const trades = state.tradeSamples;
  const columns = [[], [], [], [], []];
  let i = 0;
  let j = 0;
  while (i < bbo.length || j < trades.length) {
    if (j >= trades.length || (i < bbo.length && bbo.at(i, 0) <= trades.at(j, 0))) {
      const bid = bbo.at(i, 1);
      const ask = bbo.at(i, 2);
      columns[0].push(bbo.at(i, 0));
      columns[1].push(bid);
      columns[2].push(ask);
      columns[3].push((bid + ask) / 2);
      columns[4].push(null);
      i++;
    } else {
      columns[0].push(trades.at(j, 0));
      columns[1].push(null);
      columns[2].push(null);
      columns[3].push(null);
      columns[4].push(trades.at(j, 1));
      j++;
    }
  }
  chart.setData(columns);
}

function resize() {
  chart.setSize({ width: Math.max(300, $("chart").clientWidth), height: 320 });
}

async function stats() {
  try {
    const response = await fetch("/api/v1/stats", { headers: headers() });
    const s = await response.json();
    const now = performance.now();
    const events = s.feeds.reduce((sum, f) => sum + f.events, 0);
    const previous = state.lastStats;
    state.lastStats = { at: now, events };
    const rate = previous ? Math.round(((events - previous.events) * 1000) / (now - previous.at)) : 0;
    const queues = s.subscribers.streams.map((q) => q.queued_events);
    const rows = [
      ["Version", `${s.version}, up ${s.uptime_secs} s`],
      ["Events in", `${rate.toLocaleString()} /s`],
      ["Subscribers", s.subscribers.count],
      ["Max queue depth", `${Math.max(0, ...queues)} events`],
      ["Drops (lagged pushes)", s.subscribers.lagged],
      ["Resyncs", s.subscribers.resyncs],
      ["Gateway views", s.gateway.views],
      ["Store", s.recorder ? (s.recorder.store_up ? "up" : "DOWN") : "off"],
      ["Recorder lag (max)", s.recorder ? `${s.recorder.max_commit_lag_ms.toFixed(1)} ms` : "–"],
      ["Stored events", s.recorder ? s.recorder.stored : "–"],
    ];
    $("server").replaceChildren(
      ...rows.flatMap(([name, value]) => [
        Object.assign(document.createElement("dt"), { textContent: name }),
        Object.assign(document.createElement("dd"), { textContent: String(value) }),
      ]),
    );
  } catch (e) {
    // The banner says the server is away; the panel keeps its last figures.
  }
}

$("instrument").addEventListener("change", (e) => show(e.target.value));
$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("key").value.trim();
  sessionStorage.setItem("raven-key", state.key);
  $("login").hidden = true;
  if (state.ws) state.ws.close();
});
window.addEventListener("resize", resize);
setInterval(sample, SAMPLE_MS);
setInterval(stats, STATS_MS);
stats();
connect();
