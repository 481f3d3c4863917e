// The agent workbench: sign in with the agent's token, watch the queues
// live, take conversations and work several at once (unread counts), read
// each one's whole history (older pages as the agent scrolls up), reply,
// quote, tag, hand back to the bot, and pick canned responses from the
// bot's own templates in the customer's locale.
import { ParleyClient } from "./client.js";
import { ConversationView } from "./chat.js";
import { CannedResponses } from "./canned.js";
import { el, gatewayUrl, hashParams, randomHex, storage } from "./dom.js";
import { messageText } from "./render.js";
import { utf8Cut } from "./client.js";

const $ = (sel) => document.querySelector(sel);
const session = (() => {
  try {
    sessionStorage.setItem("parley.probe", "1");
    return sessionStorage;
  } catch {
    return storage();
  }
})();

function signIn() {
  const form = $("#signin");
  const h = hashParams();
  form.principal.value = h.principal || session.getItem("parley.wb.principal") || "";
  form.token.value = h.token || "";
  form.gateway.value = h.gateway || session.getItem("parley.wb.gateway") || gatewayUrl("");
  const saved = session.getItem("parley.wb.token");
  if (!h.token && saved && form.principal.value) return start(form.principal.value, saved, form.gateway.value);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    start(form.principal.value.trim(), form.token.value, form.gateway.value.trim());
  });
  if (h.token && h.principal) start(h.principal, h.token, form.gateway.value);
}

function start(principal, token, gateway) {
  // The token lives in this tab's session only; the fragment is cleared so it is not bookmarked.
  session.setItem("parley.wb.principal", principal);
  session.setItem("parley.wb.token", token);
  session.setItem("parley.wb.gateway", gateway);
  if (location.hash) history.replaceState(null, "", location.pathname);
  $("#signin").hidden = true;
  $("#app").hidden = false;
  $("#me").textContent = principal;
  const store = storage();
  const deviceKey = `parley.wb.device.${principal}`;
  const device = store.getItem(deviceKey) || `wb-${randomHex(8)}`;
  store.setItem(deviceKey, device);
  const client = new ParleyClient({ url: gateway, principal, token, role: "agent", device, store });
  const wb = new Workbench(client, principal);
  window.parleyWorkbench = wb;
  client.connect();
}

class Workbench {
  constructor(client, me) {
    this.client = client;
    this.me = me;
    this.queue = new Map();   // conversation -> queue item
    this.convs = new Map();   // conversation -> {view, tab, pane, unread, meta}
    this.active = null;
    this.quote = null;
    this.canned = new CannedResponses($("#canned"), {
      me,
      insert: (text, focus) => {
        $("#reply").value = text;
        if (focus) $("#reply").focus();
      },
    });
    client.on("state", ({ state, delayMs }) => {
      document.body.dataset.state = state;
      $("#conn").textContent = state === "open" ? "Online" : state === "reconnecting" ? `Reconnecting${delayMs !== undefined ? ` in ${Math.ceil(delayMs / 1000)} s` : ""}…` : state;
    });
    client.on("welcome", (w) => this.onWelcome(w));
    client.on("queue", ({ item, removed }) => {
      if (removed) this.queue.delete(item.conversation);
      else this.queue.set(item.conversation, item);
      this.drawQueue();
    });
    client.on("event", (ev) => this.onEvent(ev));
    client.on("send", (p) => {
      const c = this.convs.get(p.conversation);
      if (!c) return;
      if (p.summary && p.summary.content) c.view.updateLocal(p);
      if (p.state === "failed") this.flash(`Not sent: ${p.error.message}`);
    });
    client.on("error", (e) => {
      if (e.fatal) this.flash(e.message);
    });
    $("#composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.reply();
    });
    $("#reply").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        this.reply();
      }
    });
    $("#tag-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const tag = $("#tag").value.trim();
      if (!tag || !this.active) return;
      $("#tag").value = "";
      this.client.act(this.active, { tag: { add: [tag], remove: [] } });
    });
    $("#hand-back").addEventListener("click", () => {
      const conversation = this.active;
      if (!conversation) return;
      // The gateway stops streaming a conversation to the agent who handed it
      // back, so its SendAck is what says it is done.
      this.client.act(conversation, { handBack: { note: "" } }).done
        .then(() => this.finished(conversation, "Handed back to the bot"))
        .catch((e) => this.flash(`Could not hand it back: ${e.message}`));
    });
    $("#quote-clear").addEventListener("click", () => this.setQuote(null));
  }

  async onWelcome(w) {
    // Conversations this agent holds resume after their cursor; their history is read back in pages.
    for (const cur of w.cursors) {
      const c = this.open(cur.conversation, {});
      if (!c.view.timeline.items.length) c.view.loadLatest(Number(cur.afterSeq)).catch(() => {});
    }
    try {
      const items = await this.client.queueList();
      this.queue = new Map(items.map((i) => [i.conversation, i]));
      this.drawQueue();
    } catch {
      // Listed again after the next Welcome.
    }
  }

  drawQueue() {
    const list = $("#queue");
    const rows = [...this.queue.values()].sort((a, b) => a.sinceMs - b.sinceMs).map((i) =>
      el("li", { class: "wb-qitem", dataset: { conversation: i.conversation } },
        el("div", { class: "wb-qhead" }, el("strong", { text: i.customer }), el("span", { class: "wb-qname", text: ` ${i.queue} · ${i.locale || "?"}` })),
        el("p", { class: "wb-note", text: i.note }),
        el("button", { type: "button", class: "wb-take", text: "Take", on: { click: () => this.take(i) } })));
    list.replaceChildren(...rows);
    $("#queue-count").textContent = String(this.queue.size);
  }

  take(item) {
    this.open(item.conversation, { customer: item.customer, locale: item.locale });
    this.client.act(item.conversation, { take: {} }).done.catch((e) => this.flash(`Could not take it: ${e.message}`));
    this.select(item.conversation);
  }

  open(conversation, meta) {
    let c = this.convs.get(conversation);
    if (c) return c;
    const pane = el("div", { class: "pl-list wb-pane", hidden: true, dataset: { conversation } });
    $("#panes").append(pane);
    const badge = el("span", { class: "wb-unread", text: "" });
    const tab = el("button", { type: "button", class: "wb-tab", dataset: { conversation }, on: { click: () => this.select(conversation) } },
      el("span", { class: "wb-tab-name", text: meta.customer || conversation }), badge);
    $("#tabs").append(tab);
    const view = new ConversationView(pane, this.client, conversation, {
      me: this.me, role: "agent", showSystem: true, onQuote: (ev) => this.setQuote(ev),
    });
    c = { view, pane, tab, badge, unread: 0, meta: { ...meta }, mine: true };
    this.convs.set(conversation, c);
    if (!this.active) this.select(conversation);
    return c;
  }

  select(conversation) {
    this.active = conversation;
    for (const [id, c] of this.convs) {
      const on = id === conversation;
      c.pane.hidden = !on;
      c.tab.classList.toggle("wb-active", on);
      if (on) {
        c.unread = 0;
        c.badge.textContent = "";
        c.view.list.scrollToBottom();
      }
    }
    const c = this.convs.get(conversation);
    $("#conv-title").textContent = c ? `${c.meta.customer || "customer"} · ${conversation}` : "";
    $("#tags").textContent = c && c.meta.tags ? c.meta.tags.join(", ") : "";
    $("#conv-state").textContent = c && c.state ? c.state : "";
    this.setQuote(null);
    this.canned.setContext({ locale: c ? c.meta.locale : "", customer: c ? c.meta.customer : "" });
    $("#work").hidden = !c;
  }

  onEvent(ev) {
    const c = this.convs.get(ev.conversation) || this.open(ev.conversation, {});
    c.view.addEvent(ev);
    if (ev.kind === "opened") {
      c.meta.customer = ev.customer;
      c.meta.locale = ev.locale;
      c.tab.querySelector(".wb-tab-name").textContent = ev.customer;
      if (this.active === ev.conversation) this.select(ev.conversation);
    }
    if (ev.kind === "locale_changed") c.meta.locale = ev.locale;
    if (ev.kind === "tagged") {
      c.meta.tags = ev.tags;
      if (this.active === ev.conversation) $("#tags").textContent = ev.tags.join(", ");
    }
    if (ev.kind === "handed_back") this.finished(ev.conversation, "Handed back to the bot");
    if (ev.kind === "closed") this.finished(ev.conversation, "Closed");
    if (ev.kind === "assigned" && ev.assignee === this.me) {
      c.tab.classList.remove("wb-done");
      c.mine = true;
    }
    if (ev.kind === "message" && this.active !== ev.conversation && ev.sender !== this.me) {
      c.unread++;
      c.badge.textContent = String(c.unread);
    }
  }

  finished(conversation, why) {
    const c = this.convs.get(conversation);
    if (!c) return;
    c.mine = false;
    c.state = why;
    c.tab.classList.add("wb-done");
    if (this.active === conversation) $("#conv-state").textContent = why;
  }

  setQuote(ev) {
    this.quote = ev ? { seq: ev.seq, excerpt: utf8Cut(messageText(ev), 280), sender: ev.sender } : null;
    $("#quote-bar").hidden = !this.quote;
    $("#quote-text").textContent = this.quote ? `${this.quote.sender}: ${this.quote.excerpt}` : "";
  }

  reply() {
    const text = $("#reply").value.trim();
    if (!text || !this.active) return;
    const c = this.convs.get(this.active);
    let p;
    try {
      p = this.client.send(this.active, text, { quote: this.quote || undefined });
    } catch (e) {
      this.flash(e.message);
      return;
    }
    $("#reply").value = "";
    c.view.addLocal(p);
    c.view.list.scrollToBottom();
    this.setQuote(null);
    this.canned.clear();
  }

  flash(text) {
    const f = $("#flash");
    f.textContent = text;
    f.hidden = false;
    clearTimeout(this.flashTimer);
    this.flashTimer = setTimeout(() => { f.hidden = true; }, 6000);
  }
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", signIn);
else signIn();
