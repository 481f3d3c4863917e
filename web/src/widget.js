// The customer widget: one script tag and a container on any page.
//
//   <div data-parley-widget data-principal="cust-42" data-token="..."
//        data-locale="es" data-gateway="wss://chat.example.com/"></div>
//   <script src="https://chat.example.com/widget.js" defer></script>
//
// It opens a conversation in the customer's locale with the first message,
// shows the bot's replies (cards, images, buttons, quick replies, quotes),
// sends taps as postbacks, shows a message at once and marks it when the
// gateway acknowledges it, and says when it is reconnecting. docs/web.md
// lists every data- attribute.
import { ParleyClient } from "./client.js";
import { ConversationView } from "./chat.js";
import { el, gatewayUrl, hashParams, randomHex, storage } from "./dom.js";

const script = document.currentScript;
const assetBase = script && script.src ? new URL(".", script.src).href : "/";

function settings(container) {
  // Container attributes first, then the page's fragment (the demo page and
  // `parley run` pass a development token there).
  const d = { ...container.dataset, ...hashParams() };
  return {
    gateway: gatewayUrl(d.gateway || (script && script.src ? wsFrom(script.src) : "")),
    principal: d.principal,
    token: d.token,
    locale: d.locale || navigator.language || "en",
    conversation: d.conversation,
    title: d.title || "Chat with us",
  };
}

function wsFrom(src) {
  const u = new URL(src);
  return `${u.protocol === "https:" ? "wss" : "ws"}://${u.host}/`;
}

function ensureStyles() {
  if (document.querySelector("link[data-parley-css]")) return;
  document.head.append(el("link", { rel: "stylesheet", href: new URL("parley.css", assetBase).href, "data-parley-css": true }));
}

export function mount(container) {
  const s = settings(container);
  const store = storage();
  if (!s.principal || !s.token) {
    container.replaceChildren(el("p", { class: "pl-error", text: "Chat is not configured: data-principal and data-token are required." }));
    return null;
  }
  // One conversation per customer and browser, kept across reloads.
  const convKey = `parley.widget.conversation.${s.principal}`;
  const conversation = s.conversation || store.getItem(convKey) || `web-${s.principal}-${randomHex(6)}`;
  store.setItem(convKey, conversation);
  const deviceKey = "parley.widget.device";
  const device = store.getItem(deviceKey) || `web-${randomHex(8)}`;
  store.setItem(deviceKey, device);

  const status = el("div", { class: "pl-status-bar", role: "status", "aria-live": "polite" });
  const viewport = el("div", { class: "pl-list", role: "log", "aria-label": "Conversation" });
  const input = el("textarea", { class: "pl-input", rows: 1, placeholder: "Type a message…", "aria-label": "Message", maxlength: 4000 });
  const sendBtn = el("button", { class: "pl-send", type: "submit", text: "Send" });
  const form = el("form", { class: "pl-composer" }, input, sendBtn);
  const root = el("div", { class: "pl-widget", dataset: { conversation } },
    el("header", { class: "pl-header" }, el("span", { text: s.title })), status, viewport, form);
  container.replaceChildren(root);
  ensureStyles();

  const client = new ParleyClient({ url: s.gateway, principal: s.principal, token: s.token, role: "customer", device, locale: s.locale, store });
  const view = new ConversationView(viewport, client, conversation, {
    me: s.principal,
    role: "customer",
    onPostback: (ev, b) => send({ postback: { payload: b.payload, label: b.label, sourceSeq: ev.seq } }),
  });

  function send(content) {
    let p;
    try {
      p = client.send(conversation, content, { locale: s.locale });
    } catch (e) {
      status.textContent = e.message;
      return;
    }
    view.addLocal(p);
    view.list.scrollToBottom();
  }

  // Messages written before a reload and not answered yet are sent again
  // with their ids; they show once, as "sending", until their event arrives.
  for (const p of client.pending(conversation)) view.addLocal(p);

  client.on("event", (ev) => {
    if (ev.conversation === conversation) view.addEvent(ev);
  });
  client.on("send", (p) => {
    if (p.conversation === conversation) view.updateLocal(p);
  });
  client.on("state", ({ state, delayMs }) => {
    root.dataset.state = state;
    if (state === "open") status.textContent = "";
    else if (state === "reconnecting") status.textContent = delayMs !== undefined ? `Reconnecting in ${Math.ceil(delayMs / 1000)} s…` : "Reconnecting…";
    else if (state === "connecting") status.textContent = "Connecting…";
    else if (state === "closed") status.textContent = "Disconnected.";
  });
  client.on("welcome", (w) => {
    // After a reload the stream resumes after the cursor: what came before it is read back.
    const cur = w.cursors.find((c) => c.conversation === conversation);
    if (cur && !view.timeline.items.length) view.loadLatest(Number(cur.afterSeq)).catch(() => {});
  });
  client.on("error", (e) => {
    if (e.code === "EREFUSED" && e.fatal) status.textContent = `The chat refused the connection: ${e.message}`;
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send(text);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  // Leaving the page flushes the ACKs; a page restored from the back/forward
  // cache connects again (its unanswered sends are still in the client).
  window.addEventListener("pagehide", () => client.close());
  window.addEventListener("pageshow", (e) => {
    if (e.persisted) client.connect();
  });
  client.connect();
  return { client, view, conversation };
}

function start() {
  const containers = document.querySelectorAll("[data-parley-widget]");
  const mounted = [];
  for (const c of containers) mounted.push(mount(c));
  window.parleyWidget = mounted[0] || null;
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
