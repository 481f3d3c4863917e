// The browser benchmark's page code (bench/web/run.mjs drives it in
// headless Chromium): a history of `history` messages, then a burst of
// `burst` messages of which a fraction arrive late (out of order), rendered
// either the way the widget and the workbench render (virtualised list,
// one DOM update per animation frame, insertion by binary search) or the
// naive way (every message in the DOM, one DOM update per message, a linear
// scan to find its place). Both draw each row with the same renderRow.
//
// Figures: time per frame (rAF intervals during the burst: p50, p99),
// dropped frames (missed 60 Hz vsyncs), arrival-to-paint per message (from
// the task that brings it to the first task after the frame that shows it),
// and DOM nodes after the burst.
import { Timeline } from "./timeline.js";
import { VirtualList } from "./virtual-list.js";
import { renderRow } from "./render.js";
import { el } from "./dom.js";

const VSYNC = 1000 / 60;
const CTX = { me: "customer", role: "customer" };

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = "order parcel refund delivery tomorrow thanks please address invoice card payment help status tracking number week".split(" ");

function message(seq, r) {
  const n = 3 + Math.floor(r() * 18);
  const words = [];
  for (let i = 0; i < n; i++) words.push(WORDS[Math.floor(r() * WORDS.length)]);
  const mine = r() < 0.5;
  return {
    conversation: "bench", seq, kind: "message", serverTimeMs: 1700000000000 + seq * 1000,
    sender: mine ? "customer" : "agent-1", senderRole: mine ? "customer" : "agent", clientMsgId: "",
    redelivered: false, content: { kind: "text", body: `#${seq} ${words.join(" ")}`, fallback: "" },
    quote: null, action: null, assignee: "", tags: [], stateKeys: [], locale: "", customer: "",
  };
}

/** The burst's arrival order: seqs from..to, with a fraction held back by 1-20 places. */
function arrivalOrder(from, count, fraction, r) {
  const order = [];
  const late = [];
  for (let i = 0; i < count; i++) {
    const seq = from + i;
    if (r() < fraction) late.push({ seq, at: i + 1 + Math.floor(r() * 20) });
    else order.push(seq);
    for (let k = late.length - 1; k >= 0; k--) {
      if (late[k].at <= i) {
        order.push(late[k].seq);
        late.splice(k, 1);
      }
    }
  }
  for (const l of late) order.push(l.seq);
  return order;
}

function percentile(xs, p) {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

const frame = () => new Promise((r) => requestAnimationFrame(r));
const afterPaint = () => new Promise((r) => {
  const ch = new MessageChannel();
  ch.port1.onmessage = () => r(performance.now());
  requestAnimationFrame(() => ch.port2.postMessage(0));
});

// ------------------------------------------------------------------ renderers

class Virtual {
  constructor(host, history) {
    this.timeline = new Timeline();
    for (const ev of history) this.timeline.add(ev);
    this.onFrame = null;
    this.list = new VirtualList(host, this.timeline, {
      renderRow: (row) => renderRow(row, CTX),
      afterFrame: () => this.onFrame && this.onFrame(),
    });
  }

  add(ev) {
    const at = this.timeline.add(ev);
    if (at >= 0) this.list.invalidate(at);
  }
}

class Naive {
  constructor(host, history) {
    this.host = host;
    this.rows = []; // {seq, el}, in seq order
    host.classList.add("plv");
    for (const ev of history) this.insert(ev, false);
    host.scrollTop = host.scrollHeight;
  }

  insert(ev, stick) {
    // A linear scan from the start for the first row with a higher seq.
    let i = 0;
    while (i < this.rows.length && this.rows[i].seq < ev.seq) i++;
    if (i < this.rows.length && this.rows[i].seq === ev.seq) return;
    const row = { seq: ev.seq, el: renderRow(ev, CTX) };
    this.host.insertBefore(row.el, i < this.rows.length ? this.rows[i].el : null);
    this.rows.splice(i, 0, row);
    // One update per message: it is shown, and the view follows the bottom, at once.
    if (stick) this.host.scrollTop = this.host.scrollHeight;
  }

  add(ev) {
    this.insert(ev, true);
  }
}

/**
 * Runs one measurement. opts: mode ("virtual" | "naive"), history, burst,
 * outOfOrder (fraction), batch (messages per arrival task), intervalMs,
 * seed. Resolves with the figures.
 */
async function run(opts) {
  const o = { mode: "virtual", history: 10000, burst: 1000, outOfOrder: 0.1, batch: 5, intervalMs: 4, seed: 1, ...opts };
  const r = rng(o.seed);
  const host = el("div", { class: "pl-list bench-list" });
  document.body.replaceChildren(el("div", { class: "bench-frame" }, host));
  const history = [];
  for (let s = 1; s <= o.history; s++) history.push(message(s, r));
  const burst = new Map();
  for (let s = o.history + 1; s <= o.history + o.burst; s++) burst.set(s, message(s, r));
  const order = arrivalOrder(o.history + 1, o.burst, o.outOfOrder, r);

  const t0 = performance.now();
  const view = o.mode === "naive" ? new Naive(host, history) : new Virtual(host, history);
  await afterPaint();
  const historyMs = performance.now() - t0;
  for (let i = 0; i < 10; i++) await frame(); // settle: observers, first layouts

  // Frames during the burst, and when each message reached the screen.
  const frames = [];
  const arrived = new Map();
  const painted = new Map();
  let unpainted = [];
  let running = true;
  const commit = () => {
    if (!unpainted.length) return;
    const batch = unpainted;
    unpainted = [];
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      const t = performance.now();
      for (const seq of batch) painted.set(seq, t);
    };
    ch.port2.postMessage(0);
  };
  // The virtual list commits in its own frame callback; the naive version's
  // changes are in the DOM as they arrive and go out with the next frame.
  if (o.mode === "virtual") view.onFrame = commit;
  // A frame's work: from its start (the rAF timestamp) to the first task
  // after it, which runs once its callbacks, style, layout and paint are done.
  const work = [];
  const loop = (t) => {
    frames.push(t);
    if (o.mode === "naive") commit();
    const ch = new MessageChannel();
    ch.port1.onmessage = () => work.push(performance.now() - t);
    ch.port2.postMessage(0);
    if (running) requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
  await frame();

  const done = new Promise((resolve) => {
    let i = 0;
    const tick = () => {
      const now = performance.now();
      for (let k = 0; k < o.batch && i < order.length; k++, i++) {
        const seq = order[i];
        arrived.set(seq, now);
        unpainted.push(seq);
        view.add(burst.get(seq));
      }
      if (i < order.length) setTimeout(tick, o.intervalMs);
      else resolve();
    };
    setTimeout(tick, o.intervalMs);
  });
  await done;
  const burstEnd = performance.now();
  while (painted.size < order.length && performance.now() - burstEnd < 30000) await frame();
  await frame();
  running = false;
  await frame();

  const intervals = [];
  for (let i = 1; i < frames.length; i++) intervals.push(frames[i] - frames[i - 1]);
  const dropped = intervals.reduce((n, d) => n + Math.max(0, Math.round(d / VSYNC) - 1), 0);
  // Intervals in whole vsyncs: rAF timestamps are vsync-aligned, their
  // sub-millisecond jitter is the clock's, not the page's.
  const vsyncs = intervals.map((d) => Math.max(1, Math.round(d / VSYNC)));
  const lat = [];
  for (const [seq, t] of arrived) if (painted.has(seq)) lat.push(painted.get(seq) - t);
  // The rows in seq order, as the page holds them: checks that both renderers kept the order.
  const seqs = o.mode === "naive" ? view.rows.map((x) => x.seq) : view.timeline.items.map((x) => x.seq);
  let ordered = seqs.length === o.history + o.burst;
  for (let i = 1; ordered && i < seqs.length; i++) ordered = seqs[i] === seqs[i - 1] + 1;
  return {
    mode: o.mode, history: o.history, burst: o.burst, outOfOrder: order.filter((s, i) => i > 0 && s < order[i - 1]).length,
    frames: intervals.length,
    frameP50: percentile(intervals, 50), frameP99: percentile(intervals, 99), frameMax: Math.max(0, ...intervals),
    vsyncP99: percentile(vsyncs, 99) * VSYNC, workP50: percentile(work, 50), workP99: percentile(work, 99),
    dropped, paintP50: percentile(lat, 50), paintP99: percentile(lat, 99), painted: lat.length,
    domNodes: document.getElementsByTagName("*").length, historyMs, ordered,
    intervals: o.trace ? intervals.map((x) => +x.toFixed(1)) : undefined,
  };
}

window.runBench = run;
