// One conversation on screen: its Timeline (events by seq, own messages in
// flight) drawn by a VirtualList, and its history read in pages from the
// newest backwards as the reader scrolls up.
import { Timeline } from "./timeline.js";
import { VirtualList } from "./virtual-list.js";
import { renderRow } from "./render.js";

const PAGE = 50;

export class ConversationView {
  /** ctx: {me, role, onPostback, onQuote, showSystem}; see render.js. */
  constructor(viewport, client, conversation, ctx) {
    this.client = client;
    this.conversation = conversation;
    this.timeline = new Timeline();
    this.loadingOlder = false;
    this.complete = false; // the history down to seq 1 is here
    this.list = new VirtualList(viewport, this.timeline, {
      renderRow: (row) => renderRow(row, ctx),
      onTop: () => this.loadOlder(),
    });
  }

  /** An event of the stream, a fetched page's event, or a redelivery: placed by seq. */
  addEvent(ev) {
    const at = this.timeline.add(ev);
    if (at >= 0) this.list.invalidate(at);
    if (ev.seq === 1) this.complete = true;
    return at >= 0;
  }

  addLocal(p) {
    if (this.timeline.addLocal(p)) this.list.invalidate(this.timeline.items.length);
  }

  updateLocal(p) {
    this.timeline.updateLocal(p);
    this.list.invalidate(this.timeline.items.length);
  }

  /** The latest page up to `upTo` (the cursor the gateway resumed after). */
  async loadLatest(upTo) {
    if (upTo < 1) {
      this.complete = true;
      return;
    }
    const from = Math.max(1, upTo - PAGE + 1);
    const page = await this.client.fetch(this.conversation, from, upTo, PAGE);
    for (const ev of page.events) this.addEvent(ev);
    this.list.scrollToBottom();
  }

  /** The page before the oldest event shown; the top of the list asked for it. */
  async loadOlder() {
    const first = this.timeline.first;
    if (this.loadingOlder || this.complete || first <= 1 || this.client.state !== "open") return;
    this.loadingOlder = true;
    try {
      const from = Math.max(1, first - PAGE);
      const page = await this.client.fetch(this.conversation, from, first - 1, PAGE);
      // The reader stays on the message they were reading: the rows added
      // above push the view down by their height. (Chromium's scroll
      // anchoring does this itself, except at the very top.)
      const vp = this.list.viewport;
      const h0 = vp.scrollHeight;
      const t0 = vp.scrollTop;
      for (const ev of page.events) this.addEvent(ev);
      this.list.afterNextFrame(() => {
        if (vp.scrollTop === t0) vp.scrollTop = t0 + (vp.scrollHeight - h0);
      });
    } catch {
      // Asked again when the top comes into view after the reconnect.
    } finally {
      this.loadingOlder = false;
    }
  }

  destroy() {
    this.list.destroy();
  }
}
