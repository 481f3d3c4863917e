// How one row of a conversation looks, shared by the widget and the
// workbench. Every piece of text goes through el(..., {text}) (textContent):
// a card title, a button label, a quote or a customer's message that holds
// markup shows the markup's characters and runs nothing.
import { el, safeUrl } from "./dom.js";

/** Plain text of a message, for quotes and canned-response previews. */
export function messageText(ev) {
  const c = ev.content || (ev.summary && ev.summary.content && normalise(ev.summary.content));
  if (!c) return "";
  switch (c.kind) {
    case "text": return c.body;
    case "card": return [c.title, c.text].filter(Boolean).join(" — ");
    case "quickReplies": return c.text;
    case "image": return c.alt || "[image]";
    case "postback": return c.label || c.payload;
    default: return c.fallback || "";
  }
}

// A local echo keeps what the application passed to send(): the same shapes, plain.
function normalise(content) {
  if (typeof content === "string") return { kind: "text", body: content };
  if (content.text !== undefined) return { kind: "text", body: content.text };
  if (content.postback) return { kind: "postback", ...content.postback };
  return { kind: "text", body: "" };
}

// One formatter for every row: making one per call costs more than the rest of the row.
const TIME = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });

const SYSTEM_TEXT = {
  opened: (ev) => `Conversation opened (${ev.locale || "no locale"})`,
  assigned: (ev) => (ev.assignee.startsWith("queue:") ? `Waiting in ${ev.assignee.slice(6)}` : `Assigned to ${ev.assignee}`),
  handed_off: (ev) => `Handed to the ${ev.action && ev.action.queue ? ev.action.queue : "agent"} queue`,
  handed_back: () => "Handed back to the bot",
  closed: () => "Conversation closed",
  tagged: (ev) => `Tags: ${ev.tags.length ? ev.tags.join(", ") : "none"}`,
  state_changed: () => null,
  locale_changed: (ev) => `Language: ${ev.locale}`,
};

/**
 * The element of a row: an event or an own message still in flight.
 * ctx: {me, role ("customer" | "agent"), onPostback(ev, {payload, label}),
 * onQuote(ev) (the workbench's "quote" action), showSystem}.
 */
export function renderRow(row, ctx) {
  if (row.local) return renderLocal(row, ctx);
  if (row.kind !== "message") {
    const f = SYSTEM_TEXT[row.kind];
    const text = f ? f(row) : null;
    if (!text || (!ctx.showSystem && row.kind !== "handed_off" && row.kind !== "handed_back" && row.kind !== "closed")) {
      return el("div", { class: "pl-row pl-hidden", dataset: { seq: row.seq } });
    }
    return el("div", { class: "pl-row pl-system", dataset: { seq: row.seq, kind: row.kind } }, el("span", { text }));
  }
  const mine = row.sender === ctx.me;
  const cls = `pl-row pl-msg ${mine ? "pl-mine" : "pl-theirs"} pl-from-${row.senderRole}`;
  const bubble = el("div", { class: "pl-bubble" });
  if (row.quote && row.quote.seq) bubble.append(renderQuote(row.quote));
  bubble.append(renderContent(row, ctx));
  const meta = el("div", { class: "pl-meta" },
    el("span", { class: "pl-sender", text: mine ? "You" : row.sender || row.senderRole }),
    el("time", { text: TIME.format(row.serverTimeMs) }),
    mine ? el("span", { class: "pl-status pl-acked", title: `stored as #${row.seq}`, text: "✓" }) : null);
  const out = el("div", { class: cls, dataset: { seq: row.seq, id: row.clientMsgId } }, bubble, meta);
  if (ctx.onQuote) {
    out.append(el("button", { class: "pl-quote-btn", type: "button", title: "Quote this message", text: "Quote", on: { click: () => ctx.onQuote(row) } }));
  }
  return out;
}

function renderLocal(row, ctx) {
  const fake = { content: normalise(row.summary && row.summary.content ? row.summary.content : ""), quote: row.quote };
  const bubble = el("div", { class: "pl-bubble" });
  if (row.quote && row.quote.seq) bubble.append(renderQuote(row.quote));
  bubble.append(renderContent(fake, ctx));
  const status = row.state === "failed" ? `not sent: ${row.error || "failed"}` : row.state === "acked" ? "✓" : "sending…";
  return el("div", { class: `pl-row pl-msg pl-mine pl-local pl-${row.state}`, dataset: { id: row.id, state: row.state } },
    bubble,
    el("div", { class: "pl-meta" }, el("span", { class: "pl-sender", text: "You" }),
      el("span", { class: `pl-status ${row.state === "acked" ? "pl-acked" : ""}`, text: status })));
}

function renderQuote(q) {
  return el("blockquote", { class: "pl-quote" },
    el("span", { class: "pl-quote-sender", text: q.sender || "" }),
    el("span", { class: "pl-quote-text", text: q.excerpt || "" }));
}

export function renderContent(ev, ctx) {
  const c = ev.content;
  if (!c) return el("p", { class: "pl-text", text: "" });
  switch (c.kind) {
    case "text":
      return el("p", { class: "pl-text", text: c.body });
    case "postback":
      return el("p", { class: "pl-text pl-postback", text: c.label || c.payload });
    case "image": {
      const src = safeUrl(c.url);
      return src ? el("img", { class: "pl-image", src, alt: c.alt || "", loading: "lazy" }) : el("p", { class: "pl-text", text: c.fallback || c.alt });
    }
    case "card": {
      const card = el("div", { class: "pl-card" });
      const src = safeUrl(c.imageUrl);
      if (src) card.append(el("img", { class: "pl-card-img", src, alt: "", loading: "lazy" }));
      if (c.title) card.append(el("h4", { class: "pl-card-title", text: c.title }));
      if (c.text) card.append(el("p", { class: "pl-card-text", text: c.text }));
      if (c.buttons && c.buttons.length) {
        const bar = el("div", { class: "pl-buttons" });
        for (const b of c.buttons) bar.append(renderButton(ev, b, ctx));
        card.append(bar);
      }
      return card;
    }
    case "quickReplies": {
      const box = el("div", { class: "pl-qr" }, el("p", { class: "pl-text", text: c.text }));
      const bar = el("div", { class: "pl-buttons pl-chips" });
      for (const r of c.replies || []) {
        bar.append(el("button", {
          class: "pl-chip", type: "button", text: r.label,
          disabled: !ctx.onPostback,
          on: { click: () => ctx.onPostback && ctx.onPostback(ev, { payload: r.payload, label: r.label }) },
        }));
      }
      box.append(bar);
      return box;
    }
    default:
      return el("p", { class: "pl-text", text: c.fallback || "" });
  }
}

function renderButton(ev, b, ctx) {
  if (b.kind === "url") {
    const href = safeUrl(b.url);
    if (!href) return el("span", { class: "pl-button pl-disabled", text: b.label });
    return el("a", { class: "pl-button", href, target: "_blank", rel: "noopener noreferrer", text: b.label });
  }
  return el("button", {
    class: "pl-button", type: "button", text: b.label,
    disabled: !ctx.onPostback,
    on: { click: () => ctx.onPostback && ctx.onPostback(ev, { payload: b.postback, label: b.label }) },
  });
}
