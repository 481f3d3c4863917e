// DOM helpers for the pages. Text from bots, customers and agents only ever
// reaches the page through textContent and attribute setters, never through
// innerHTML or insertAdjacentHTML: a message that looks like markup shows as
// the characters it is made of.

/** el("div", {class: "x", text: "..."}, child, ...) */
export function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

/**
 * A URL a page may open or show: http, https, or a path on this site. Any
 * other scheme (javascript:, data:, vbscript:, ...) gives null.
 */
export function safeUrl(url, base = globalThis.location ? globalThis.location.href : "http://localhost/") {
  if (typeof url !== "string" || !url) return null;
  try {
    const u = new URL(url, base);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

/** Settings from the page's URL fragment (#gateway=...&token=...), which the browser never sends to a server. */
export function hashParams() {
  const h = (globalThis.location && location.hash.replace(/^#/, "")) || "";
  return Object.fromEntries(new URLSearchParams(h));
}

/** The gateway's WebSocket URL: the given one, else this page's own origin. */
export function gatewayUrl(given) {
  if (given) return given;
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
}

/** A random hex string of n bytes. */
export function randomHex(n) {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** localStorage when the page may use it, else a Map with the same methods. */
export function storage() {
  try {
    const k = "parley.probe";
    localStorage.setItem(k, "1");
    localStorage.removeItem(k);
    return localStorage;
  } catch {
    const m = new Map();
    return { getItem: (k) => m.get(k) ?? null, setItem: (k, v) => m.set(k, String(v)), removeItem: (k) => m.delete(k) };
  }
}
