// Canned responses: the bot's own templates (its templates/*.yaml, which the
// gateway serves at /templates/ when `web.templates` names them), in the
// customer's locale with the same fallback as the bot (the locale, its
// language, then the default), searchable by key and by text. Picking one
// puts it in the reply box; its {placeholders} get a field each, filled at
// once where the value is known (customer, agent) and as the agent types
// the others.
import { parse } from "yaml";
import { el } from "./dom.js";

const PLURAL = new Set(["zero", "one", "two", "few", "many", "other"]);
const DEFAULT_LOCALE = "en";

/** Flattens a templates document to [{key, text}]; plural forms give their `other` text. */
export function flatten(doc, prefix = "", out = []) {
  if (!doc || typeof doc !== "object") return out;
  for (const [k, v] of Object.entries(doc)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (typeof v === "string") out.push({ key, text: v });
    else if (v && typeof v === "object" && Object.keys(v).every((x) => PLURAL.has(x)) && typeof v.other === "string") out.push({ key, text: v.other });
    else flatten(v, key, out);
  }
  return out;
}

/** The names of a template's {placeholders}, in order, once each. */
export function placeholders(text) {
  return [...new Set([...text.matchAll(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g)].map((m) => m[1]))];
}

/** The template with the given values; a placeholder without one stays as {name}. */
export function fill(text, vars) {
  return text.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (m, name) => (vars[name] ? vars[name] : m));
}

/** Locales to try for `locale`, most specific first: es-MX, es, then the default. */
export function localeChain(locale) {
  const out = [];
  const parts = (locale || "").replace(/_/g, "-").split("-").filter(Boolean);
  for (let n = parts.length; n > 0; n--) out.push(parts.slice(0, n).join("-"));
  if (!out.includes(DEFAULT_LOCALE)) out.push(DEFAULT_LOCALE);
  return out;
}

export class CannedResponses {
  constructor(root, { me, insert, base = "/templates/" }) {
    this.root = root;
    this.me = me;
    this.insert = insert;
    this.base = base;
    this.cache = new Map(); // locale -> Promise of [{key, text}] or null
    this.items = [];
    this.picked = null;
    this.context = { locale: "", customer: "" };
    this.search = el("input", { type: "search", class: "wb-canned-search", placeholder: "Search canned responses", "aria-label": "Search canned responses" });
    this.list = el("ul", { class: "wb-canned-list" });
    this.fields = el("div", { class: "wb-canned-vars" });
    this.note = el("p", { class: "wb-canned-note" });
    root.replaceChildren(this.search, this.note, this.list, this.fields);
    this.search.addEventListener("input", () => this.draw());
  }

  async load(locale) {
    if (!this.cache.has(locale)) {
      this.cache.set(locale, fetch(`${this.base}${encodeURIComponent(locale)}.yaml`, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.text() : null))
        .then((t) => (t === null ? null : flatten(parse(t))))
        .catch(() => null));
    }
    return this.cache.get(locale);
  }

  /** The conversation changed: its locale picks the templates, its customer fills {customer}. */
  async setContext({ locale, customer }) {
    this.context = { locale: locale || "", customer: customer || "" };
    this.clear();
    // A key missing in one locale falls through to the next, as in the bot.
    const merged = new Map();
    let found = [];
    for (const l of localeChain(locale)) {
      const items = await this.load(l);
      if (!items) continue;
      found.push(l);
      for (const it of items) if (!merged.has(it.key)) merged.set(it.key, { ...it, locale: l });
    }
    if (this.context.locale !== (locale || "")) return; // another conversation was picked meanwhile
    this.items = [...merged.values()];
    this.note.textContent = found.length ? `Templates: ${found.join(" → ")}` : "No templates are served (web.templates).";
    this.draw();
  }

  draw() {
    const q = this.search.value.trim().toLowerCase();
    const shown = this.items.filter((it) => !q || it.key.toLowerCase().includes(q) || it.text.toLowerCase().includes(q)).slice(0, 50);
    this.list.replaceChildren(...shown.map((it) =>
      el("li", {},
        el("button", { type: "button", class: "wb-canned-item", dataset: { key: it.key }, on: { click: () => this.pick(it) } },
          el("code", { text: it.key }), el("span", { text: it.text })))));
  }

  pick(it) {
    const known = { customer: this.context.customer, name: this.context.customer, agent: this.me };
    const vars = {};
    for (const name of placeholders(it.text)) vars[name] = known[name] || "";
    this.picked = { ...it, vars };
    const inputs = Object.keys(vars).map((name) => {
      const input = el("input", { type: "text", dataset: { var: name }, value: vars[name], placeholder: name, "aria-label": name });
      input.addEventListener("input", () => {
        vars[name] = input.value;
        this.insert(fill(it.text, vars));
      });
      return el("label", { class: "wb-var" }, el("span", { text: `{${name}}` }), input);
    });
    this.fields.replaceChildren(...inputs);
    // The agent types the values that are not known where the cursor lands: the first empty field.
    const empty = this.fields.querySelector("input[data-var]:placeholder-shown");
    this.insert(fill(it.text, vars), !empty);
    if (empty) empty.focus();
  }

  clear() {
    this.picked = null;
    this.fields.replaceChildren();
  }
}
