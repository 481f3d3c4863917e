// The protocol v1 frames, generated from proto/parley.proto by
// @bufbuild/protoc-gen-es at build time (web/gen/), with the conversions the
// client needs between the generated messages and plain objects.
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as pb from "../gen/parley_pb.js";

export { pb, create };

export const ROLE = { customer: 1, agent: 2, bot: 3, system: 4 };
export const ROLE_NAME = ["unspecified", "customer", "agent", "bot", "system"];
export const EVENT_KIND_NAME = [
  "unspecified", "message", "opened", "assigned", "handed_off", "handed_back",
  "closed", "tagged", "state_changed", "locale_changed",
];

/** Error codes by name, as the ErrorCode enum numbers them. */
export const ERROR = {
  NONE: 0, MALFORMED: 1, FRAME_TOO_LARGE: 2, UNSUPPORTED_VERSION: 3, UNSUPPORTED_FRAME: 4,
  UNAUTHENTICATED: 5, FORBIDDEN: 6, NOT_FOUND: 7, INVALID: 8, PROTOCOL: 9, STALE_EPOCH: 10,
  RATE_LIMITED: 11, TOO_MANY_CONNECTIONS: 12, CLOSED: 13, BUSY: 14, INTERNAL: 15,
  SHUTTING_DOWN: 16, HELLO_REQUIRED: 17, ACK_OUT_OF_RANGE: 18,
};
export const ERROR_NAME = Object.fromEntries(Object.entries(ERROR).map(([k, v]) => [v, k]));

export function encodeFrame(kind, value) {
  return toBinary(pb.FrameSchema, create(pb.FrameSchema, { body: { case: kind, value } }));
}

export function decodeFrame(bytes) {
  return fromBinary(pb.FrameSchema, bytes);
}

export function hex(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += bytes[i].toString(16).padStart(2, "0");
  return s;
}

export function unhex(s) {
  const out = new Uint8Array(s.length >>> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16);
  return out;
}

export function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

export function fromBase64(s) {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * A seq as a JavaScript number. Seqs are uint64 on the wire; the browser
 * keeps them as numbers, exact up to 2^53 - 1, and refuses larger ones as a
 * protocol error rather than round them.
 */
export function seqNumber(v) {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`seq ${v} is beyond 2^53 - 1`);
  return n;
}

function contentView(c) {
  if (!c) return null;
  const body = c.body.case ? { kind: c.body.case, ...plain(c.body.value) } : { kind: "empty" };
  if (body.kind === "postback") body.sourceSeq = Number(c.body.value.sourceSeq);
  return { ...body, fallback: c.fallback };
}

// A generated message as a plain object: oneofs flattened to {kind, ...}.
function plain(m) {
  if (m === null || typeof m !== "object") return m;
  if (Array.isArray(m)) return m.map(plain);
  const out = {};
  for (const [k, v] of Object.entries(m)) {
    if (k === "$typeName") continue;
    if (k === "action" && v && typeof v === "object" && "case" in v) {
      out.kind = v.case === "postback" ? "postback" : "url";
      out[v.case] = v.value;
    } else if (v && typeof v === "object" && "case" in v && "value" in v) {
      out[k] = v.case ? { kind: v.case, ...plain(v.value) } : null;
    } else if (typeof v === "bigint") {
      out[k] = Number(v);
    } else {
      out[k] = plain(v);
    }
  }
  return out;
}

/** The plain view of an Event that the client hands to applications. */
export function eventView(ev) {
  return {
    conversation: ev.conversation,
    seq: seqNumber(ev.seq),
    kind: EVENT_KIND_NAME[ev.kind] || "unspecified",
    serverTimeMs: Number(ev.serverTimeMs),
    sender: ev.sender,
    senderRole: ROLE_NAME[ev.senderRole] || "unspecified",
    clientMsgId: hex(ev.clientMsgId),
    redelivered: ev.redelivered,
    content: contentView(ev.content),
    quote: ev.quote ? { seq: Number(ev.quote.seq), excerpt: ev.quote.excerpt, sender: ev.quote.sender } : null,
    action: ev.action && ev.action.body.case ? { kind: ev.action.body.case, ...plain(ev.action.body.value) } : null,
    assignee: ev.assignee,
    tags: [...ev.tags],
    stateKeys: [...ev.stateKeys],
    locale: ev.locale,
    customer: ev.customer,
  };
}

/**
 * Content from the plain form applications write:
 *   "hello" | {text} | {card: {title, text, imageUrl, buttons}} |
 *   {quickReplies: {text, replies}} | {image: {url, alt}} |
 *   {postback: {payload, label, sourceSeq}}
 * Buttons are {label, postback} or {label, url}.
 */
export function makeContent(c) {
  if (typeof c === "string") c = { text: c };
  const fallback = c.fallback || "";
  if (c.text !== undefined) return { body: { case: "text", value: { body: String(c.text) } }, fallback };
  if (c.postback) {
    const p = c.postback;
    return {
      body: { case: "postback", value: { payload: p.payload, label: p.label || "", sourceSeq: BigInt(p.sourceSeq || 0) } },
      fallback: fallback || p.label || p.payload,
    };
  }
  if (c.card) {
    const k = c.card;
    const buttons = (k.buttons || []).map((b) => ({
      label: b.label,
      action: b.url ? { case: "url", value: b.url } : { case: "postback", value: b.postback || b.payload || "" },
    }));
    return { body: { case: "card", value: { title: k.title || "", text: k.text || "", imageUrl: k.imageUrl || "", buttons } }, fallback };
  }
  if (c.quickReplies) {
    const q = c.quickReplies;
    return { body: { case: "quickReplies", value: { text: q.text || "", replies: q.replies || [] } }, fallback };
  }
  if (c.image) return { body: { case: "image", value: { url: c.image.url, alt: c.image.alt || "" } }, fallback };
  throw new TypeError("content: expected text, card, quickReplies, image or postback");
}

/** An Action from {tag: {add, remove}} | {handoff: {queue, note}} | {handBack: {note}} | {take: {}} | {close: {reason}} | {setLocale: {locale}}. */
export function makeAction(a) {
  const [kind] = Object.keys(a);
  const known = ["tag", "handoff", "handBack", "take", "close", "setLocale"];
  if (!known.includes(kind)) throw new TypeError(`action: expected one of ${known.join(", ")}`);
  return { body: { case: kind, value: a[kind] || {} } };
}
