// The browser client's protocol rules (web/src/client.js), run with node's
// test runner against a real `parley gateway` process over real WebSockets
// on loopback. Faults come from a relay between them (tests/web/harness.mjs)
// that drops frames and cuts connections, and from the gateway's own test
// faults (dropped, doubled and reordered pushes).
//   PARLEY_BIN=build/cli/parley node --test tests/web/client.test.mjs
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { join } from "node:path";
import { PRINCIPALS, WEB, customer, requireWeb, seeded, startBot, startGateway, startRelay, until } from "./harness.mjs";

const { WebSocket } = requireWeb("ws");
const { ParleyClient, reconnectDelay, resendDelay } = await import(join(WEB, "src/client.js"));
const { insertBySeq, lowerBound } = await import(join(WEB, "src/sorted.js"));
const { Timeline } = await import(join(WEB, "src/timeline.js"));

// Fast timers, so that resends, gap fetches and reconnects happen within a test.
const FAST = { ackTimeoutMs: 300, retryMaxMs: 1000, gapTimeoutMs: 100, reconnectMinMs: 20, reconnectMaxMs: 200, ackBatchMs: 20 };

function client(url, who, extra = {}) {
  const c = new ParleyClient({ url, principal: who.name, token: who.token, role: "customer", device: "dev-1", locale: "en", WebSocket, ...FAST, ...extra });
  c.seen = [];
  c.errors = [];
  c.on("event", (ev) => c.seen.push(ev));
  c.on("error", (e) => c.errors.push(e));
  return c;
}

async function opened(c) {
  c.connect();
  await until(() => c.state === "open", `${c.opts.principal} to be welcomed`);
}

function messages(c, conv) {
  return c.seen.filter((e) => e.conversation === conv && e.kind === "message");
}

function assertConsecutive(evs, conv) {
  const seqs = evs.filter((e) => e.conversation === conv).map((e) => e.seq);
  for (let i = 0; i < seqs.length; i++) assert.equal(seqs[i], seqs[0] + i, `seqs of ${conv} are consecutive: ${seqs.join(",")}`);
}

describe("pure rules", () => {
  test("insertion by seq is a binary search: at most ceil(log2(n+1)) comparisons", () => {
    const items = [];
    for (let s = 1; s <= 10000; s += 2) items.push({ seq: s });
    let comparisons = 0;
    const key = (x) => (comparisons++, x.seq);
    for (const seq of [2, 5000, 9998, 10000]) {
      comparisons = 0;
      lowerBound(items, seq, key);
      assert.ok(comparisons <= Math.ceil(Math.log2(items.length + 1)), `${comparisons} comparisons for ${items.length} items`);
    }
    assert.equal(insertBySeq(items, { seq: 4 }), 2);
    assert.equal(insertBySeq(items, { seq: 4 }), -1, "the same seq is not inserted twice");
    assert.deepEqual(items.slice(0, 4).map((x) => x.seq), [1, 3, 4, 5]);
  });

  test("reconnect backoff is full jitter under min(cap, base * 2^n), with retry_after as a floor", () => {
    const t = { reconnectMinMs: 100, reconnectMaxMs: 30000 };
    assert.equal(reconnectDelay(3, t, 0, () => 0.999999), 799);
    assert.equal(reconnectDelay(3, t, 0, () => 0), 0);
    assert.equal(reconnectDelay(20, t, 0, () => 0.5), 15000);
    assert.equal(reconnectDelay(0, t, 5000, () => 0.5), 5000);
    const r = seeded(7);
    for (let n = 0; n < 12; n++) {
      const d = reconnectDelay(n, t, 0, r);
      assert.ok(d >= 0 && d < Math.min(30000, 100 * 2 ** n), `attempt ${n}: ${d}`);
    }
  });

  test("resend backoff has a floor of a quarter of the ACK timeout", () => {
    const t = { ackTimeoutMs: 2000, retryMaxMs: 30000 };
    assert.equal(resendDelay(1, t, () => 0), 500);
    assert.equal(resendDelay(1, t, () => 0.99), 1980);
    assert.equal(resendDelay(10, t, () => 0.99), 29700);
  });

  test("a timeline shows an own message once, whether its event or its echo comes first", () => {
    const tl = new Timeline();
    tl.addLocal({ id: "aa", state: "sent", summary: { content: "hi" } });
    assert.equal(tl.length, 1);
    assert.equal(tl.add({ seq: 3, clientMsgId: "aa", kind: "message" }), 0);
    assert.equal(tl.length, 1, "the event replaced the echo");
    assert.equal(tl.addLocal({ id: "aa", state: "queued" }), false, "a resend after a reload adds nothing");
    tl.add({ seq: 1, clientMsgId: "", kind: "opened" });
    tl.add({ seq: 2, clientMsgId: "", kind: "assigned" });
    assert.deepEqual(tl.items.map((e) => e.seq), [1, 2, 3]);
  });
});

describe("against a real gateway", () => {
  let gw;
  let relay;
  before(async () => {
    gw = await startGateway("limits: {ack_timeout: 300ms, heartbeat: 200ms}\n");
    relay = await startRelay(gw.url);
  });
  after(async () => {
    await relay.close();
    await gw.stop();
  });

  test("a send is acknowledged with its seq, and every device sees the same stream", async () => {
    const a = client(gw.url, customer(0));
    const b = client(gw.url, customer(0), { device: "dev-2" });
    await opened(a);
    const p = a.send("c0-basic", "hello");
    assert.equal(p.id.length, 32, "a 16-byte id");
    const r = await p.done;
    assert.equal(r.seq, 3, "OPENED 1, ASSIGNED 2, the message 3");
    assert.equal(r.duplicate, false);
    const q = await a.send("c0-basic", { text: "second" }).done;
    assert.equal(q.seq, 4);
    await until(() => messages(a, "c0-basic").length === 2, "both messages echoed");
    assert.deepEqual(a.seen.filter((e) => e.conversation === "c0-basic").map((e) => e.seq), [1, 2, 3, 4]);
    assert.equal(a.seen[0].kind, "opened");
    assert.equal(a.seen[0].locale, "en");
    assert.equal(messages(a, "c0-basic")[0].clientMsgId, p.id);
    // A second device resumes from nothing: the history is fetched, the stream continues.
    await opened(b);
    const page = await b.fetch("c0-basic", 1, 0, 10);
    assert.deepEqual(page.events.map((e) => e.seq), [1, 2, 3, 4]);
    assert.equal(page.end, true);
    await a.send("c0-basic", "third").done;
    await until(() => b.seen.some((e) => e.seq === 5), "the second device to get seq 5");
    a.close();
    b.close();
    assert.deepEqual(a.errors, []);
  });

  test("a send refused as final fails with the gateway's code; the next send goes on", async () => {
    const a = client(gw.url, customer(1));
    const intruder = client(gw.url, customer(2));
    await opened(a);
    await opened(intruder);
    await a.send("c1-own", "mine").done;
    await assert.rejects(intruder.send("c1-own", "not yours").done, (e) => e.code === "EREFUSED" && /FORBIDDEN/.test(e.message));
    const ok = await intruder.send("c2-own", "fine").done;
    assert.equal(ok.seq, 3);
    a.close();
    intruder.close();
  });

  test("connection cut after the Send reached the gateway: the resend gets the original seq, flagged duplicate", async () => {
    const a = client(relay.url, customer(3));
    await opened(a);
    await a.send("c3-cut", "first").done;
    let cut = 0;
    relay.onServer = (f) => (f.body.case === "sendAck" && cut++ === 0 ? "cut" : "pass");
    const p = a.send("c3-cut", "in the middle");
    const r = await p.done;
    relay.onServer = null;
    assert.equal(cut, 2, "the first SendAck was lost with its connection");
    assert.equal(r.duplicate, true, "the gateway had stored it");
    assert.equal(r.seq, 4);
    await until(() => messages(a, "c3-cut").length === 2, "both messages");
    assert.equal(messages(a, "c3-cut").filter((e) => e.clientMsgId === p.id).length, 1, "stored and shown once");
    assert.ok(a.stats.reconnects >= 1);
    a.close();
  });

  test("connection cut before the Send reached the gateway: it is written again after the reconnect", async () => {
    const a = client(relay.url, customer(4));
    await opened(a);
    let cut = 0;
    relay.onClient = (f) => (f.body.case === "send" && cut++ === 0 ? "cut" : "pass");
    const r = await a.send("c4-cut", "lost on the way").done;
    relay.onClient = null;
    assert.equal(r.duplicate, false);
    assert.equal(r.seq, 3);
    a.close();
  });

  test("50 sends through a connection cut every few frames land once each, in sending order", async () => {
    const rnd = seeded(1234);
    const a = client(relay.url, customer(5), { random: seeded(99) });
    await opened(a);
    let cuts = 0;
    // Bounded: at most 15 cuts, each at a random Send or SendAck.
    relay.onClient = (f) => (f.body.case === "send" && cuts < 15 && rnd() < 0.2 ? (cuts++, "cut") : "pass");
    relay.onServer = (f) => (f.body.case === "sendAck" && cuts < 15 && rnd() < 0.2 ? (cuts++, "cut") : "pass");
    const sends = [];
    for (let i = 0; i < 50; i++) sends.push(a.send("c5-storm", `m${i}`));
    const results = await Promise.all(sends.map((p) => p.done));
    relay.onClient = relay.onServer = null;
    assert.ok(cuts >= 5, `the run cut ${cuts} connections`);
    const seqs = results.map((r) => r.seq);
    for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] === seqs[i - 1] + 1, `sending order kept: ${seqs.join(",")}`);
    await until(() => messages(a, "c5-storm").length === 50, "50 messages in the stream");
    const texts = messages(a, "c5-storm").map((e) => e.content.body);
    assert.deepEqual(texts, sends.map((_, i) => `m${i}`), "each once, in order");
    assertConsecutive(a.seen, "c5-storm");
    a.close();
  });

  test("a lost Deliver leaves a gap that is fetched; early events wait in the reorder buffer", async () => {
    const a = client(relay.url, customer(6));
    const b = client(gw.url, customer(6), { device: "dev-b" });
    await opened(a);
    await opened(b);
    await a.send("c6-gap", "open").done;
    await until(() => messages(a, "c6-gap").length === 1, "first");
    let dropped = 0;
    relay.onServer = (f) => (f.body.case === "deliver" && dropped < 2 ? (dropped++, "drop") : "pass");
    for (let i = 0; i < 5; i++) await b.send("c6-gap", `from b ${i}`).done;
    await until(() => messages(a, "c6-gap").length === 6, "all six messages at a");
    relay.onServer = null;
    assert.equal(dropped, 2);
    assert.ok(a.stats.gapFetches >= 1, "the gap was fetched");
    assertConsecutive(a.seen, "c6-gap");
    assert.deepEqual(messages(a, "c6-gap").map((e) => e.content.body), ["open", ...[0, 1, 2, 3, 4].map((i) => `from b ${i}`)]);
    a.close();
    b.close();
  });

  test("resume after a reconnect: nothing applied twice, nothing missed", async () => {
    const a = client(relay.url, customer(7));
    const b = client(gw.url, customer(7), { device: "dev-b" });
    await opened(a);
    await opened(b);
    for (let i = 0; i < 3; i++) await a.send("c7-resume", `a${i}`).done;
    await until(() => a.seen.length === 5, "five events");
    await new Promise((r) => setTimeout(r, 60)); // the batched ACK is flushed
    relay.silent = true;
    relay.cutAll();
    for (let i = 0; i < 4; i++) await b.send("c7-resume", `b${i}`).done;
    relay.silent = false;
    await until(() => a.seen.length === 9, "the four sent while away", 10000);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(a.seen.length, 9, "nothing applied twice");
    assertConsecutive(a.seen, "c7-resume");
    a.close();
    b.close();
  });

  test("a silent gateway is declared dead after two heartbeats and the client reconnects", async () => {
    const a = client(relay.url, customer(8));
    await opened(a);
    const before = relay.connections;
    relay.silent = true;
    try {
      await until(() => a.state !== "open", "the connection to be declared dead", 3000);
    } finally {
      relay.silent = false;
    }
    assert.ok(a.errors.some((e) => e.code === "ETIMEOUT"), "reported as a timeout");
    await until(() => a.state === "open", "a new session");
    assert.ok(relay.connections > before, "a new connection");
    await a.send("c8-hb", "still here").done;
    a.close();
  });

  test("connect() while a reconnect waits connects once, not twice", async () => {
    const a = client(relay.url, customer(11), { reconnectMinMs: 300, random: () => 0.99 });
    await opened(a);
    relay.refuse = true;
    relay.cutAll();
    await until(() => a.state === "reconnecting", "the reconnect wait");
    relay.refuse = false;
    const before = relay.connections;
    a.connect(); // a "reconnect now" button, or a page back from the back/forward cache
    await until(() => a.state === "open", "the new session");
    await new Promise((r) => setTimeout(r, 500)); // past the wait that was pending
    assert.equal(relay.connections, before + 1, "one new connection");
    await a.send("c11-once", "still one").done;
    a.close();
  });

  test("a reloaded page writes its unanswered sends again with the same id: shown once", async () => {
    const store = new Map();
    const storage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, v), removeItem: (k) => store.delete(k) };
    const a = client(relay.url, customer(9), { store: storage });
    await opened(a);
    await a.send("c9-reload", "before").done;
    // The page goes away after its Send reached the gateway, before the SendAck.
    relay.onServer = (f) => (f.body.case === "sendAck" ? "drop" : "pass");
    const p = a.send("c9-reload", "during the reload");
    await until(() => p.state === "sent", "the send written");
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(JSON.parse(store.get("parley.outbox.cust-9")).length, 1, "the outbox is kept");
    a.kill();
    a.close();
    relay.onServer = null;
    const b = client(gw.url, customer(9), { store: storage });
    const restored = b.pending("c9-reload");
    assert.equal(restored.length, 1);
    assert.equal(restored[0].id, p.id, "the same id");
    await opened(b);
    const r = await restored[0].done;
    assert.equal(r.duplicate, true);
    const page = await b.fetch("c9-reload", 1);
    assert.equal(page.events.filter((e) => e.clientMsgId === p.id).length, 1, "stored once");
    assert.equal(store.has("parley.outbox.cust-9"), false, "the outbox is empty again");
    b.close();
  });
});

describe("against a gateway that drops, doubles and reorders its pushes", () => {
  let gw;
  let bot;
  before(async () => {
    gw = await startGateway("limits: {ack_timeout: 200ms}\nfaults: {drop_push: 15, duplicate_push: 15, reorder_push: 15, drop_ack: 10, seed: 42}\n");
    bot = await startBot(gw.url);
  });
  after(async () => {
    await bot.stop();
    await gw.stop();
  });

  test("the bot's replies and the customer's messages arrive once each, in seq order", async () => {
    const a = client(gw.url, customer(10));
    await opened(a);
    for (let i = 0; i < 20; i++) await a.send("c10-faults", `question ${i}`).done;
    // Each message gets a reply: 2 events to open, 20 messages, 20 replies, 1 greeting card.
    await until(() => a.seen.filter((e) => e.conversation === "c10-faults").length >= 43, "43 events", 20000);
    assertConsecutive(a.seen, "c10-faults");
    const replies = messages(a, "c10-faults").filter((e) => e.senderRole === "bot");
    assert.equal(replies[0].content.kind, "card");
    assert.deepEqual(replies.slice(1).map((e) => e.content.body), Array.from({ length: 20 }, (_, i) => `You said: question ${i}`));
    assert.ok(a.stats.duplicates + a.stats.held + a.stats.gapFetches > 0, "the faults were seen and absorbed");
    a.close();
  });
});
