// One conversation's history as the pages render it: events sorted by seq
// (inserted by binary search, so history fetched in pages, redeliveries and
// out-of-order arrivals all land in their place), plus the customer's or
// agent's own messages that are not in the stream yet, shown at once at the
// end as "sending" and replaced by their event when it arrives. Matching is
// by client message id, so a message shows once whichever comes first: its
// SendAck, its event, or a page reload that sends it again.
import { insertBySeq, lowerBound } from "./sorted.js";

export class Timeline {
  constructor() {
    this.items = [];           // events, sorted by seq
    this.byId = new Map();     // client message id (hex) -> event
    this.local = [];           // own messages not in the stream yet, in sending order
    this.version = 0;          // bumped on every change: renderers compare it
  }

  /** Adds an event; its index, or -1 when its seq was already there. */
  add(ev) {
    const at = insertBySeq(this.items, ev);
    if (at < 0) return -1;
    if (ev.clientMsgId) {
      this.byId.set(ev.clientMsgId, ev);
      const i = this.local.findIndex((l) => l.id === ev.clientMsgId);
      if (i >= 0) this.local.splice(i, 1);
    }
    this.version++;
    return at;
  }

  /** Shows an own message at once, until its event arrives. */
  addLocal(p) {
    if (this.byId.has(p.id) || this.local.some((l) => l.id === p.id)) return false;
    this.local.push({ id: p.id, state: p.state, seq: p.seq || 0, summary: p.summary, quote: p.quote, error: null });
    this.version++;
    return true;
  }

  /** A pending send changed state (sent, acked with its seq, failed). */
  updateLocal(p) {
    const l = this.local.find((x) => x.id === p.id);
    if (!l) return;
    l.state = p.state;
    l.seq = p.seq || 0;
    l.error = p.error ? p.error.message : null;
    this.version++;
  }

  get first() {
    return this.items.length ? this.items[0].seq : 0;
  }

  get last() {
    return this.items.length ? this.items[this.items.length - 1].seq : 0;
  }

  /** The event with this seq, or undefined. */
  at(seq) {
    const i = lowerBound(this.items, seq);
    return this.items[i] && this.items[i].seq === seq ? this.items[i] : undefined;
  }

  get length() {
    return this.items.length + this.local.length;
  }

  /** Row i of what is shown: events by seq, then the own messages still in flight. */
  row(i) {
    return i < this.items.length ? this.items[i] : { local: true, ...this.local[i - this.items.length] };
  }
}
