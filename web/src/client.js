// The browser client of Parley protocol v1 (docs/protocol.md). It keeps the
// same rules as the C engine in sdk/src/core: a 16-byte client id per send,
// resent with the same id until the SendAck; one unanswered send per
// conversation; events applied in seq order with early ones held in a
// reorder buffer (binary-search insertion) and gaps fetched; cumulative,
// batched ACKs; resume from cursors after a reconnect with full-jitter
// backoff; heartbeats both ways.
//
// It runs in browsers and in Node (tests pass a WebSocket constructor).
// Nothing here touches the DOM: the widget and the workbench render the
// events this client emits.
import {
  ERROR, ERROR_NAME, ROLE, decodeFrame, encodeFrame, eventView, fromBase64, hex,
  makeAction, makeContent, seqNumber, toBase64, unhex,
} from "./proto.js";
import { insertBySeq, lowerBound } from "./sorted.js";

/** Defaults of the tuning, the same as parley_tuning's (docs/protocol.md). */
export const DEFAULTS = Object.freeze({
  ackTimeoutMs: 2000,
  retryMaxMs: 30000,
  maxAttempts: 10,
  sendDeadlineMs: 120000,
  outboxMax: 10000,
  ackBatchN: 32,
  ackBatchMs: 50,
  reorderMax: 256,
  gapTimeoutMs: 200,
  fetchPage: 200,
  heartbeatMs: 10000,
  reconnectMinMs: 100,
  reconnectMaxMs: 30000,
  maxFrameBytes: 1 << 20,
});

// Refusals after which the same Send may be written again (docs/protocol.md).
const RETRYABLE = new Set([ERROR.BUSY, ERROR.RATE_LIMITED, ERROR.INTERNAL, ERROR.SHUTTING_DOWN]);
// Answers to sends that completed lately: a late SendAck to one of them is
// not an error (a resend crossed its answer).
const RECENT_DONE = 256;

/** An error with a code (EATTEMPTS, ETIMEOUT, EREFUSED, EPROTOCOL, ECLOSED, ...) and context. */
export class ParleyError extends Error {
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "ParleyError";
    this.code = code;
    Object.assign(this, extra);
  }
}

/**
 * The n-th reconnect's wait: full jitter, U[0, min(cap, base * 2^n)), with
 * the last retry_after as a floor. `random` returns [0, 1).
 */
export function reconnectDelay(n, { reconnectMinMs, reconnectMaxMs }, retryAfterMs, random) {
  const ceiling = Math.min(reconnectMaxMs, reconnectMinMs * 2 ** Math.min(n, 30));
  return Math.max(retryAfterMs || 0, Math.floor(random() * ceiling));
}

/** The wait after the n-th write of a send (n >= 1) with no answer. */
export function resendDelay(n, { ackTimeoutMs, retryMaxMs }, random) {
  const ceiling = Math.min(retryMaxMs, ackTimeoutMs * 2 ** Math.min(n - 1, 30));
  return Math.max(Math.floor(ackTimeoutMs / 4), Math.floor(random() * ceiling));
}

/** A fresh 16-byte client message id. */
export function newMessageId() {
  const id = new Uint8Array(16);
  globalThis.crypto.getRandomValues(id);
  return id;
}

/**
 * A connection of one customer or agent to a gateway, across reconnects.
 *
 * options:
 *   url, principal, token, role ("customer" | "agent"), device (stable per
 *   installation), locale, queues (agents), WebSocket (constructor; default
 *   globalThis.WebSocket), store (an object with getItem/setItem/removeItem,
 *   such as localStorage: unanswered sends survive a page reload in it),
 *   random, clock ({now, setTimeout, clearTimeout}), and any DEFAULTS key.
 *
 * Events (client.on(name, fn) returns a function that removes fn):
 *   state {state, attempt, delayMs}   connecting | open | reconnecting | closed
 *   welcome {welcome}                 every successful Hello
 *   event (ev)                        an event applied in seq order, exactly once
 *   send (pending)                    a pending send changed (queued, written, acked, failed)
 *   queue {item, removed}             agents: a QueueUpdate
 *   error (ParleyError)               a problem reported by the gateway or found in its frames
 */
export class ParleyClient {
  constructor(options) {
    const o = { ...DEFAULTS, ...options };
    if (!o.url) throw new TypeError("ParleyClient: url is required");
    if (!o.principal) throw new TypeError("ParleyClient: principal is required");
    if (!(o.role in ROLE) || o.role === "bot") throw new TypeError("ParleyClient: role is customer or agent");
    this.opts = o;
    this.WS = o.WebSocket || globalThis.WebSocket;
    this.random = o.random || Math.random;
    this.clock = o.clock || { now: () => Date.now(), setTimeout: (f, ms) => setTimeout(f, ms), clearTimeout: (t) => clearTimeout(t) };
    this.store = o.store || null;
    this.storeKey = `parley.outbox.${o.principal}`;
    this.listeners = new Map();
    this.state = "idle";
    this.ws = null;
    this.welcome = null;
    this.attempt = 0;
    this.retryAfterMs = 0;
    this.convs = new Map();       // conversation -> stream state
    this.queues = new Map();      // conversation -> [pending sends], head on the wire
    this.pendingById = new Map(); // hex id -> pending send
    this.recentDone = [];         // hex ids of the last completed sends
    this.requests = new Map();    // request id -> {resolve, reject, kind, ...}
    this.nextRequest = 1;
    this.ackDirty = new Set();
    this.ackCount = 0;
    this.ackTimer = null;
    this.hbTimer = null;
    this.reconnectTimer = null;
    this.lastRx = 0;
    this.lastTx = 0;
    this.stats = { framesIn: 0, framesOut: 0, resends: 0, reconnects: 0, gapFetches: 0, duplicates: 0, held: 0 };
    this.restoreOutbox();
  }

  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name).delete(fn);
  }

  emit(name, arg) {
    const set = this.listeners.get(name);
    if (!set) return;
    for (const fn of set) {
      try {
        fn(arg);
      } catch (e) {
        // An application callback that throws must not break the stream.
        console.error(`parley: ${name} listener failed`, e);
      }
    }
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, ...extra });
  }

  // ------------------------------------------------------------ connection

  /** Connects, and keeps reconnecting until close(). */
  connect() {
    if (this.ws) return; // connecting or open already
    this.closing = false;
    // Called while a reconnect waits: connect now instead, once.
    if (this.reconnectTimer) this.clock.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.open();
  }

  open() {
    this.setState(this.attempt ? "reconnecting" : "connecting", { attempt: this.attempt });
    let ws;
    try {
      ws = new this.WS(this.opts.url, "parley.v1");
    } catch (e) {
      this.emit("error", new ParleyError("ECONNECT", `cannot open ${this.opts.url}: ${e.message}`));
      this.scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.welcome = null;
    this.connectedAt = this.clock.now();
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastRx = this.clock.now();
      this.writeFrame("hello", this.hello());
    };
    ws.onmessage = (m) => {
      if (this.ws !== ws) return;
      this.onBytes(m.data);
    };
    ws.onerror = () => {};
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.dropped(e.code, e.reason);
    };
    this.startHeartbeat();
  }

  hello() {
    const o = this.opts;
    const resume = [];
    for (const [conversation, c] of this.convs) {
      if (c.next > 1) resume.push({ conversation, afterSeq: BigInt(c.next - 1) });
    }
    return {
      minVersion: 1, maxVersion: 1, principal: o.principal, token: o.token || "",
      role: ROLE[o.role], device: o.device || "", resume, client: "parley-web/0.1",
      locale: o.locale || "", queues: o.queues || [],
    };
  }

  /** The connection went away: everything on the wire is written again after the next Welcome. */
  dropped(code, reason) {
    this.ws = null;
    this.welcome = null;
    this.stopHeartbeat();
    this.clearAckTimer();
    for (const c of this.convs.values()) this.cancelGap(c);
    for (const [id, r] of this.requests) {
      if (r.kind !== "gap") r.reject(new ParleyError("EDISCONNECTED", "the connection was lost", { code }));
      this.clock.clearTimeout(r.timer);
      this.requests.delete(id);
    }
    for (const q of this.queues.values()) {
      if (q.length) this.clearSendTimer(q[0]);
    }
    if (this.closing) {
      this.setState("closed", { code, reason });
      return;
    }
    // Fatal refusals that no retry can fix stop the client.
    if (code === 4000 + ERROR.UNAUTHENTICATED || code === 4000 + ERROR.UNSUPPORTED_VERSION) {
      this.closing = true;
      this.setState("closed", { code, reason });
      return;
    }
    this.scheduleReconnect();
  }

  scheduleReconnect() {
    const delayMs = reconnectDelay(this.attempt, this.opts, this.retryAfterMs, this.random);
    this.attempt++;
    this.stats.reconnects++;
    this.setState("reconnecting", { attempt: this.attempt, delayMs });
    this.reconnectTimer = this.clock.setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.closing) this.open();
    }, delayMs);
  }

  /** Drops the connection as if the network had failed (tests, and a "reconnect now" button). */
  kill() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try {
        ws.close();
      } catch {}
      this.dropped(1006, "dropped");
    }
  }

  /** Flushes the ACKs and closes with 1000. Unanswered sends stay in the store for the next page. */
  close() {
    this.closing = true;
    if (this.reconnectTimer) this.clock.clearTimeout(this.reconnectTimer);
    for (const q of this.queues.values()) for (const p of q) this.clearSendTimer(p);
    if (this.ws && this.welcome) this.flushAcks();
    if (this.ws) {
      const ws = this.ws;
      try {
        ws.close(1000, "bye");
      } catch {}
      this.dropped(1000, "closed by the client");
    } else {
      this.setState("closed", { code: 1000 });
    }
  }

  startHeartbeat() {
    this.stopHeartbeat();
    const tick = () => {
      const hb = (this.welcome && this.welcome.heartbeatMs) || this.opts.heartbeatMs;
      const now = this.clock.now();
      // Nothing heard for two intervals (or no Welcome in that time): dead.
      if (now - this.lastRx >= 2 * hb && now - this.connectedAt >= 2 * hb) {
        this.emit("error", new ParleyError("ETIMEOUT", `nothing from the gateway for ${2 * hb} ms`));
        this.kill();
        return;
      }
      if (this.welcome && now - this.lastTx >= hb) {
        this.writeFrame("ping", { nonce: BigInt(now), timeMs: BigInt(Date.now()) });
      }
      this.hbTimer = this.clock.setTimeout(tick, Math.max(10, Math.floor(hb / 4)));
    };
    this.hbTimer = this.clock.setTimeout(tick, Math.max(10, Math.floor(this.opts.heartbeatMs / 4)));
  }

  stopHeartbeat() {
    if (this.hbTimer) this.clock.clearTimeout(this.hbTimer);
    this.hbTimer = null;
  }

  writeFrame(kind, value) {
    return this.writeBytes(encodeFrame(kind, value));
  }

  writeBytes(bytes) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    const limit = (this.welcome && this.welcome.maxFrameBytes) || this.opts.maxFrameBytes;
    if (bytes.length > limit) throw new ParleyError("ETOOBIG", `frame of ${bytes.length} bytes is over the ${limit}-byte limit`);
    this.ws.send(bytes);
    this.lastTx = this.clock.now();
    this.stats.framesOut++;
    return true;
  }

  // ---------------------------------------------------------------- frames

  onBytes(data) {
    this.lastRx = this.clock.now();
    const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
    const limit = (this.welcome && this.welcome.maxFrameBytes) || this.opts.maxFrameBytes;
    if (bytes.length > limit) {
      this.emit("error", new ParleyError("ETOOBIG", `a frame of ${bytes.length} bytes from the gateway is over the limit`));
      return;
    }
    let frame;
    try {
      frame = decodeFrame(bytes);
    } catch (e) {
      this.emit("error", new ParleyError("EPROTOCOL", `undecodable frame: ${e.message}`));
      return;
    }
    this.stats.framesIn++;
    const { case: kind, value } = frame.body;
    if (!this.welcome && kind !== "welcome" && kind !== "error" && kind !== "ping" && kind !== "pong") {
      this.emit("error", new ParleyError("EPROTOCOL", `${kind} before Welcome`));
      return;
    }
    try {
      switch (kind) {
        case "welcome": return this.onWelcome(value);
        case "ping": return this.writeFrame("pong", { nonce: value.nonce, timeMs: BigInt(Date.now()) });
        case "pong": return;
        case "sendAck": return this.onSendAck(value);
        case "deliver": return this.onDeliver(value.events);
        case "fetchResult": return this.onFetchResult(value);
        case "queueResult": return this.onQueueResult(value);
        case "queueUpdate": return this.emit("queue", { item: queueItem(value.item), removed: value.removed });
        case "error": return this.onError(value);
        default:
          this.emit("error", new ParleyError("EPROTOCOL", `unexpected frame ${kind}`));
      }
    } catch (e) {
      this.emit("error", e instanceof ParleyError ? e : new ParleyError("EPROTOCOL", e.message));
    }
  }

  onWelcome(w) {
    this.welcome = w;
    this.attempt = 0;
    this.retryAfterMs = 0;
    for (const cur of w.cursors) {
      const c = this.conv(cur.conversation);
      const after = seqNumber(cur.afterSeq);
      // Cursors move next forward, never back.
      if (after + 1 > c.next) {
        c.next = after + 1;
        c.applied = Math.max(c.applied, after);
        dropHeldBelow(c, c.next);
      }
    }
    this.setState("open");
    this.emit("welcome", w);
    // Watermarks said on a lost session are said again.
    for (const [id, c] of this.convs) if (c.applied > 0) this.ackDirty.add(id);
    if (this.ackDirty.size) this.flushAcks();
    // Every unanswered send is written again, in the order it was made.
    for (const q of this.queues.values()) if (q.length) this.writeSend(q[0]);
    for (const c of this.convs.values()) if (c.held.length) this.armGap(c);
  }

  onError(e) {
    const err = new ParleyError("EREFUSED", `${ERROR_NAME[e.code] || e.code}: ${e.message}`, {
      wire: e.code, fatal: e.fatal, conversation: e.conversation, retryAfterMs: e.retryAfterMs,
    });
    if (e.retryAfterMs) this.retryAfterMs = e.retryAfterMs;
    if (e.clientMsgId && e.clientMsgId.length) {
      const p = this.pendingById.get(hex(e.clientMsgId));
      if (p && e.retryAfterMs) this.armSendTimer(p, e.retryAfterMs);
    }
    const r = e.requestId ? this.requests.get(Number(e.requestId)) : null;
    if (r && r.kind !== "gap") {
      this.requests.delete(Number(e.requestId));
      this.clock.clearTimeout(r.timer);
      r.reject(err);
    }
    this.emit("error", err);
  }

  // --------------------------------------------------------------- sending

  /**
   * Sends a message. content: a string or {text} | {card} | {quickReplies} |
   * {image} | {postback} (proto.js makeContent). opts: {quote: {seq, excerpt,
   * sender}, locale (opening a conversation), id (16 bytes or 32 hex digits)}.
   * Returns the pending send: {id, conversation, state, seq, done (a Promise
   * of {seq, duplicate})}.
   */
  send(conversation, content, opts = {}) {
    const value = { conversation, body: { case: "content", value: makeContent(content) } };
    if (opts.quote) value.quote = { seq: BigInt(opts.quote.seq), excerpt: utf8Cut(opts.quote.excerpt || "", 280), sender: opts.quote.sender || "" };
    if (opts.locale || this.opts.locale) value.locale = opts.locale || this.opts.locale;
    return this.enqueue(conversation, value, opts, { content });
  }

  /** Sends an action: {tag: {add, remove}} | {handoff} | {handBack} | {take: {}} | {close} | {setLocale}. */
  act(conversation, action, opts = {}) {
    return this.enqueue(conversation, { conversation, body: { case: "action", value: makeAction(action) } }, opts, { action });
  }

  enqueue(conversation, value, opts, summary) {
    if (!validConversation(conversation)) throw new ParleyError("EINVAL", `conversation id ${JSON.stringify(conversation)} is not 1-128 bytes of [A-Za-z0-9._:@-]`);
    if (this.pendingById.size >= this.opts.outboxMax) throw new ParleyError("EBACKPRESSURE", `${this.pendingById.size} sends are pending`);
    const id = opts.id ? (typeof opts.id === "string" ? unhex(opts.id) : opts.id) : newMessageId();
    if (id.length !== 16) throw new ParleyError("EINVAL", "a client message id is 16 bytes");
    value.clientMsgId = id;
    const bytes = encodeFrame("send", value);
    const p = this.track({ id: hex(id), conversation, bytes, created: this.clock.now(), summary, quote: opts.quote || null });
    this.persist();
    return p;
  }

  track(p) {
    p.state = "queued";
    p.attempts = 0;
    p.seq = 0;
    p.timer = null;
    p.done = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    // Nobody has to wait on `done`: failures also go out as "send" events.
    p.done.catch(() => {});
    this.pendingById.set(p.id, p);
    if (!this.queues.has(p.conversation)) this.queues.set(p.conversation, []);
    const q = this.queues.get(p.conversation);
    q.push(p);
    this.emit("send", p);
    if (q.length === 1) this.writeSend(p);
    return p;
  }

  /** The sends not answered yet, oldest first (the widget shows them as "sending"). */
  pending(conversation) {
    const out = [];
    for (const p of this.pendingById.values()) if (!conversation || p.conversation === conversation) out.push(p);
    return out;
  }

  writeSend(p) {
    if (p.attempts && this.clock.now() - p.created >= this.opts.sendDeadlineMs) {
      return this.failSend(p, new ParleyError("ETIMEOUT", `no answer within ${this.opts.sendDeadlineMs} ms`));
    }
    if (p.attempts >= this.opts.maxAttempts) {
      return this.failSend(p, new ParleyError("EATTEMPTS", `no answer after ${p.attempts} writes`));
    }
    if (!this.welcome) return; // written again after the next Welcome
    if (this.writeBytes(p.bytes)) {
      p.attempts++;
      if (p.attempts > 1) this.stats.resends++;
      p.state = "sent";
      this.emit("send", p);
    }
    this.armSendTimer(p, resendDelay(Math.max(1, p.attempts), this.opts, this.random));
  }

  armSendTimer(p, ms) {
    this.clearSendTimer(p);
    const left = this.opts.sendDeadlineMs - (this.clock.now() - p.created);
    p.timer = this.clock.setTimeout(() => {
      p.timer = null;
      this.writeSend(p);
    }, Math.max(0, Math.min(ms, left)));
  }

  clearSendTimer(p) {
    if (p.timer) this.clock.clearTimeout(p.timer);
    p.timer = null;
  }

  onSendAck(a) {
    const id = hex(a.clientMsgId);
    const p = this.pendingById.get(id);
    if (!p) {
      if (this.recentDone.includes(id)) return; // a late answer to a resend
      throw new ParleyError("EPROTOCOL", `SendAck for ${id}, which is not pending`);
    }
    if (a.error === ERROR.NONE) {
      p.seq = seqNumber(a.seq);
      p.duplicate = a.duplicate;
      p.serverTimeMs = Number(a.serverTimeMs);
      this.completeSend(p, "acked");
      p.resolve({ seq: p.seq, duplicate: p.duplicate });
      return;
    }
    if (RETRYABLE.has(a.error)) {
      this.armSendTimer(p, a.error === ERROR.RATE_LIMITED && this.retryAfterMs ? this.retryAfterMs : resendDelay(p.attempts, this.opts, this.random));
      return;
    }
    this.failSend(p, new ParleyError("EREFUSED", `${ERROR_NAME[a.error] || a.error}: ${a.message}`, { wire: a.error, conversation: p.conversation }));
  }

  failSend(p, err) {
    p.error = err;
    this.completeSend(p, "failed");
    p.reject(err);
  }

  completeSend(p, state) {
    this.clearSendTimer(p);
    p.state = state;
    this.pendingById.delete(p.id);
    this.recentDone.push(p.id);
    if (this.recentDone.length > RECENT_DONE) this.recentDone.shift();
    const q = this.queues.get(p.conversation);
    if (q && q[0] === p) q.shift();
    else if (q) q.splice(q.indexOf(p), 1);
    this.persist();
    this.emit("send", p);
    if (q && q.length) this.writeSend(q[0]);
    else this.queues.delete(p.conversation);
  }

  // Unanswered sends are kept in the store (localStorage in browsers), so a
  // page reloaded in the middle of a send writes the same bytes, with the
  // same id, again: the gateway answers with the original seq and the
  // message shows once.
  persist() {
    if (!this.store) return;
    const rows = [];
    for (const p of this.pendingById.values()) {
      rows.push({ id: p.id, conversation: p.conversation, bytes: toBase64(p.bytes), created: p.created, summary: p.summary, quote: p.quote });
    }
    try {
      if (rows.length) this.store.setItem(this.storeKey, JSON.stringify(rows));
      else this.store.removeItem(this.storeKey);
    } catch (e) {
      this.emit("error", new ParleyError("ESTORE", `cannot keep the outbox: ${e.message}`));
    }
  }

  restoreOutbox() {
    if (!this.store) return;
    let rows = [];
    try {
      rows = JSON.parse(this.store.getItem(this.storeKey) || "[]");
    } catch {
      rows = [];
    }
    for (const r of Array.isArray(rows) ? rows : []) {
      if (typeof r.id !== "string" || !/^[0-9a-f]{32}$/.test(r.id) || !validConversation(r.conversation)) continue;
      // An outbox row from an earlier page keeps its age: the deadline counts from the first write.
      this.track({ id: r.id, conversation: r.conversation, bytes: fromBase64(r.bytes), created: Math.min(r.created, this.clock.now()), summary: r.summary, quote: r.quote, restored: true });
    }
  }

  // ------------------------------------------------------------- receiving

  conv(id) {
    let c = this.convs.get(id);
    if (!c) {
      c = { id, next: 1, applied: 0, held: [], gapTimer: null, fetching: null, acked: 0, ids: new Map() };
      this.convs.set(id, c);
    }
    return c;
  }

  /** The next seq this client expects in a conversation (1 for one it never saw). */
  nextSeq(conversation) {
    const c = this.convs.get(conversation);
    return c ? c.next : 1;
  }

  onDeliver(events) {
    for (const ev of events) this.onEvent(ev);
  }

  onEvent(ev) {
    const seq = seqNumber(ev.seq);
    if (seq < 1) throw new ParleyError("EPROTOCOL", "an event with seq 0");
    const c = this.conv(ev.conversation);
    if (seq < c.next) {
      // A duplicate: drop it, and acknowledge again.
      this.stats.duplicates++;
      this.ackDirty.add(c.id);
      this.scheduleAck();
      return;
    }
    if (seq === c.next) {
      this.apply(c, ev);
      this.drainHeld(c);
      return;
    }
    // Early: hold it, sorted by seq, and fetch the gap if it stays open.
    if (c.held.length >= this.opts.reorderMax) {
      this.fetchGap(c);
      return;
    }
    const at = insertBySeq(c.held, { seq, ev });
    if (at < 0) {
      const same = c.held[lowerBound(c.held, seq)];
      if (hex(same.ev.clientMsgId) !== hex(ev.clientMsgId)) {
        throw new ParleyError("EPROTOCOL", `two different events with seq ${seq} in ${c.id}`);
      }
      return;
    }
    this.stats.held++;
    this.armGap(c);
  }

  apply(c, ev) {
    c.next++;
    c.applied = c.next - 1;
    this.ackDirty.add(c.id);
    this.ackCount++;
    this.emit("event", eventView(ev));
    this.scheduleAck();
  }

  drainHeld(c) {
    while (c.held.length && c.held[0].seq <= c.next) {
      const h = c.held.shift();
      if (h.seq === c.next) this.apply(c, h.ev);
    }
    if (!c.held.length) this.cancelGap(c);
  }

  armGap(c) {
    if (c.gapTimer || c.fetching) return;
    c.gapTimer = this.clock.setTimeout(() => {
      c.gapTimer = null;
      if (c.held.length) this.fetchGap(c);
    }, this.opts.gapTimeoutMs);
  }

  cancelGap(c) {
    if (c.gapTimer) this.clock.clearTimeout(c.gapTimer);
    c.gapTimer = null;
    c.fetching = null;
  }

  fetchGap(c) {
    if (c.fetching || !this.welcome) return;
    const to = c.held.length ? c.held[0].seq - 1 : 0;
    this.stats.gapFetches++;
    const requestId = this.nextRequest++;
    c.fetching = requestId;
    const r = { kind: "gap", conv: c, from: c.next, to };
    // One fetch per conversation in flight; one unanswered for the ACK timeout is asked again.
    r.timer = this.clock.setTimeout(() => {
      if (this.requests.get(requestId) !== r) return;
      this.requests.delete(requestId);
      c.fetching = null;
      if (c.held.length) this.fetchGap(c);
    }, this.opts.ackTimeoutMs);
    this.requests.set(requestId, r);
    this.writeFrame("fetch", { requestId: BigInt(requestId), conversation: c.id, fromSeq: BigInt(c.next), toSeq: BigInt(to), limit: this.opts.fetchPage });
  }

  onFetchResult(f) {
    const requestId = Number(f.requestId);
    const r = this.requests.get(requestId);
    if (!r) throw new ParleyError("EPROTOCOL", `FetchResult for request ${requestId}, which was not asked`);
    this.requests.delete(requestId);
    this.clock.clearTimeout(r.timer);
    if (f.error) {
      const err = new ParleyError("EREFUSED", `fetch refused: ${ERROR_NAME[f.error] || f.error}`, { wire: f.error });
      if (r.kind === "gap") {
        r.conv.fetching = null;
        this.emit("error", err);
      } else {
        r.reject(err);
      }
      return;
    }
    // The page must be consecutive seqs of the asked conversation from the asked seq.
    const evs = f.events;
    for (let i = 0; i < evs.length; i++) {
      const ok = evs[i].conversation === f.conversation && f.conversation === (r.kind === "gap" ? r.conv.id : r.conversation) &&
        seqNumber(evs[i].seq) === r.from + i && (!r.to || r.from + i <= r.to);
      if (!ok) {
        if (r.kind === "gap") r.conv.fetching = null;
        const err = new ParleyError("EPROTOCOL", `FetchResult ${requestId} is not consecutive from seq ${r.from}; dropped`);
        if (r.kind !== "gap") r.reject(err);
        throw err;
      }
    }
    if (!evs.length && !f.end) {
      if (r.kind === "gap") r.conv.fetching = null;
      throw new ParleyError("EPROTOCOL", `empty FetchResult ${requestId} without end`);
    }
    if (r.kind === "gap") {
      const c = r.conv;
      c.fetching = null;
      for (const ev of evs) this.onEvent(ev);
      if (f.end && c.held.length && c.held[0].seq > seqNumber(f.lastSeq)) {
        // The conversation ends below what we hold: those were bogus.
        c.held.length = 0;
      }
      if (c.held.length && c.held[0].seq > c.next) this.fetchGap(c);
      return;
    }
    r.resolve({ events: evs.map(eventView), end: f.end, lastSeq: seqNumber(f.lastSeq) });
  }

  /**
   * Reads a range of a conversation's history: events [from, to] (to 0 =
   * the latest), at most `limit`. It does not touch the stream: the events
   * come back to the caller, which places them by seq (the workbench pages
   * backwards through a long history this way).
   */
  fetch(conversation, from, to = 0, limit = this.opts.fetchPage) {
    if (!this.welcome) return Promise.reject(new ParleyError("EDISCONNECTED", "not connected"));
    const requestId = this.nextRequest++;
    return new Promise((resolve, reject) => {
      const r = { kind: "app", conversation, from, to, resolve, reject };
      r.timer = this.clock.setTimeout(() => {
        this.requests.delete(requestId);
        reject(new ParleyError("ETIMEOUT", `no FetchResult for ${conversation} within ${4 * this.opts.ackTimeoutMs} ms`));
      }, 4 * this.opts.ackTimeoutMs);
      this.requests.set(requestId, r);
      this.writeFrame("fetch", { requestId: BigInt(requestId), conversation, fromSeq: BigInt(from), toSeq: BigInt(to), limit });
    });
  }

  /** Agents: the conversations waiting in a queue (every watched queue when empty). */
  queueList(queue = "") {
    if (!this.welcome) return Promise.reject(new ParleyError("EDISCONNECTED", "not connected"));
    const requestId = this.nextRequest++;
    return new Promise((resolve, reject) => {
      const r = { kind: "queue", resolve, reject };
      r.timer = this.clock.setTimeout(() => {
        this.requests.delete(requestId);
        reject(new ParleyError("ETIMEOUT", "no QueueResult"));
      }, 4 * this.opts.ackTimeoutMs);
      this.requests.set(requestId, r);
      this.writeFrame("queueRequest", { requestId: BigInt(requestId), queue });
    });
  }

  onQueueResult(q) {
    const requestId = Number(q.requestId);
    const r = this.requests.get(requestId);
    if (!r) throw new ParleyError("EPROTOCOL", `QueueResult for request ${requestId}, which was not asked`);
    this.requests.delete(requestId);
    this.clock.clearTimeout(r.timer);
    r.resolve(q.items.map(queueItem));
  }

  // ------------------------------------------------------------------ ACKs

  scheduleAck() {
    const n = Math.min(this.opts.ackBatchN, Math.max(1, Math.floor(((this.welcome && this.welcome.window) || 256) / 2)));
    if (this.ackCount >= n) {
      this.flushAcks();
      return;
    }
    if (!this.ackTimer) {
      this.ackTimer = this.clock.setTimeout(() => {
        this.ackTimer = null;
        this.flushAcks();
      }, this.opts.ackBatchMs);
    }
  }

  clearAckTimer() {
    if (this.ackTimer) this.clock.clearTimeout(this.ackTimer);
    this.ackTimer = null;
  }

  /** One cumulative Ack naming every conversation with something new. */
  flushAcks() {
    this.clearAckTimer();
    this.ackCount = 0;
    if (!this.welcome || !this.ackDirty.size) return;
    const entries = [];
    for (const id of this.ackDirty) {
      const c = this.convs.get(id);
      if (c && c.applied > 0) entries.push({ conversation: id, upToSeq: BigInt(c.applied) });
    }
    this.ackDirty.clear();
    if (entries.length) this.writeFrame("ack", { entries });
  }
}

function queueItem(i) {
  return {
    conversation: i.conversation, queue: i.queue, customer: i.customer, note: i.note,
    sinceMs: Number(i.sinceMs), lastSeq: Number(i.lastSeq), locale: i.locale,
  };
}

function dropHeldBelow(c, next) {
  while (c.held.length && c.held[0].seq < next) c.held.shift();
}

/** Conversation ids: 1 to 128 bytes of [A-Za-z0-9._:@-]. */
export function validConversation(id) {
  return typeof id === "string" && /^[A-Za-z0-9._:@-]{1,128}$/.test(id);
}

/** At most `max` bytes of UTF-8, cut at a character boundary. */
export function utf8Cut(s, max) {
  const enc = new TextEncoder();
  if (enc.encode(s).length <= max) return s;
  let out = "";
  let n = 0;
  for (const ch of s) {
    const l = enc.encode(ch).length;
    if (n + l > max) break;
    out += ch;
    n += l;
  }
  return out;
}
