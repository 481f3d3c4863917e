// The widget and the workbench in Debian's Chromium (puppeteer-core), served
// by a real `parley gateway`, with the test bot (tests/web/bot) run by
// `parley run`, over real WebSockets on loopback:
//   - the scenario: a customer opens the widget, the bot greets with
//     a card, the customer taps a button and asks for a person, an agent
//     takes the conversation in the workbench, quotes the customer, answers
//     (a canned response too), tags it, and both pages reload with the same
//     history in the same order; then the agent hands it back to the bot;
//   - a script-injection attempt in every text field renders as text;
//   - a page reloaded in the middle of a send shows the message once.
// Skipped, saying why, only when Chromium cannot start.
//   PARLEY_BIN=build/cli/parley node --test tests/web/e2e.test.mjs
// PARLEY_WEB_SCREENSHOTS=DIR writes the screenshots docs/web.md shows.
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { SRC, WEB, customer as who, launchChromium, requireWeb, startBot, startGateway, startRelay, until } from "./harness.mjs";

const SHOTS = process.env.PARLEY_WEB_SCREENSHOTS || "";
const TIMEOUT = 15000;

let gw;
let bot;
let browser;
let skip = "";

before(async () => {
  const launched = await launchChromium();
  if (launched.skip) {
    skip = launched.skip;
    return;
  }
  browser = launched.browser;
  gw = await startGateway(`web: {templates: ${SRC}/tests/web/bot/templates}\n`);
  bot = await startBot(gw.url);
  if (SHOTS) mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  if (browser) await browser.close();
  if (bot) await bot.stop();
  if (gw) await gw.stop();
});

/** A page in a fresh browser context, recording script errors and CSP violations. */
async function newPage() {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error" && !/Failed to load resource/.test(m.text())) page.problems.push(`console: ${m.text()}`);
  });
  await page.evaluateOnNewDocument(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  page.ctx = ctx;
  return page;
}

async function closePage(page) {
  await page.ctx.close();
}

/** The conversation as a page holds it: [seq, kind, text] in the order shown. */
function history(page, which) {
  return page.evaluate((which) => {
    const view = which === "widget" ? window.parleyWidget.view : window.parleyWorkbench.convs.get(window.parleyWorkbench.active).view;
    return view.timeline.items.map((e) => {
      const c = e.content;
      const text = !c ? e.kind : c.kind === "text" ? c.body : c.kind === "card" ? c.title : c.kind === "quickReplies" ? c.text : c.kind === "postback" ? c.label : c.kind;
      return [e.seq, e.kind, text];
    });
  }, which);
}

async function widgetSend(page, text) {
  await page.type(".pl-input", text);
  await page.click(".pl-send");
}

async function waitText(page, selector, text) {
  try {
    await page.waitForFunction((sel, t) => [...document.querySelectorAll(sel)].some((e) => e.textContent.includes(t)), { timeout: TIMEOUT }, selector, text);
  } catch (e) {
    const seen = await page.$$eval(selector, (l) => l.map((x) => x.textContent));
    throw new Error(`no ${selector} with ${JSON.stringify(text)} on ${page.url().split("#")[0]}; there are ${JSON.stringify(seen)}`);
  }
}

async function clickText(page, selector, text) {
  await waitText(page, selector, text);
  await page.evaluate((sel, t) => [...document.querySelectorAll(sel)].find((e) => e.textContent.includes(t)).click(), selector, text);
}

async function noProblems(page) {
  const csp = await page.evaluate(() => window.__csp);
  assert.deepEqual([...page.problems, ...csp], [], "no script errors and no CSP violations");
}

const WIDGET = (who, extra = "") => `http://127.0.0.1:${gw.port}/widget.html#principal=${who}&token=cust-token-${who.split("-")[1]}${extra}`;
const WORKBENCH = (who = "agent-1", token = "agent-token") => `http://127.0.0.1:${gw.port}/workbench.html#principal=${who}&token=${token}`;

describe("customer widget and agent workbench in Chromium", () => {
  test("the scenario: card, tap, handoff, take, quote, canned reply, tag, reload, hand back", async (t) => {
    if (skip) return t.skip(skip);
    const customer = await newPage();
    await customer.goto(WIDGET("cust-0", "&locale=en"));
    await customer.waitForSelector(".pl-widget[data-state=open]", { timeout: TIMEOUT });

    // The first message opens the conversation: it shows at once (before any
    // answer could come back), then as acknowledged.
    const shownAtOnce = await customer.evaluate(() => {
      document.querySelector(".pl-input").value = "hello";
      document.querySelector(".pl-composer").requestSubmit();
      const tl = window.parleyWidget.view.timeline;
      return tl.local.length === 1 && tl.local[0].state !== "acked";
    });
    assert.ok(shownAtOnce, "the message is on the timeline before its ACK");
    await waitText(customer, ".pl-mine .pl-acked", "✓");
    // The bot greets with a card; the customer taps its button.
    await customer.waitForSelector(".pl-card .pl-card-title", { timeout: TIMEOUT });
    assert.equal(await customer.$eval(".pl-card .pl-card-title", (e) => e.textContent), "How can we help?");
    assert.equal(await customer.$eval(".pl-card img", (e) => e.getAttribute("src")), `http://127.0.0.1:${gw.port}/help.svg`);
    if (SHOTS) {
      await customer.waitForFunction(() => document.querySelector(".pl-card img").complete, { timeout: TIMEOUT });
      await customer.screenshot({ path: join(SHOTS, "widget.png") });
    }
    await clickText(customer, ".pl-card .pl-button", "Opening hours");
    await waitText(customer, ".pl-theirs .pl-text", "We're open Monday to Friday");
    await waitText(customer, ".pl-mine .pl-postback", "Opening hours");
    // Quick replies came with the answer.
    await waitText(customer, ".pl-chip", "Refunds");
    await widgetSend(customer, "I want to talk to a person please");
    await waitText(customer, ".pl-theirs .pl-text", "connecting you with a member of our team");

    // The agent signs in, sees the conversation waiting, and takes it.
    const agent = await newPage();
    await agent.goto(WORKBENCH());
    await agent.waitForSelector(".wb-take", { timeout: TIMEOUT });
    const conversation = await customer.evaluate(() => window.parleyWidget.conversation);
    assert.equal(await agent.$eval(".wb-qitem", (e) => e.dataset.conversation), conversation);
    assert.match(await agent.$eval(".wb-note", (e) => e.textContent), /Customer asked for a person/);
    await agent.click(".wb-take");
    await waitText(agent, ".wb-pane .pl-text", "I want to talk to a person please");
    await agent.waitForFunction(() => document.querySelectorAll(".wb-qitem").length === 0, { timeout: TIMEOUT });
    // Its whole history is there, from the OPENED event on.
    await agent.waitForFunction(() => window.parleyWorkbench.convs.values().next().value.view.timeline.first === 1, { timeout: TIMEOUT });

    // Quote the customer and answer.
    await agent.evaluate(() => {
      const row = [...document.querySelectorAll(".wb-pane .pl-msg")].find((r) => r.textContent.includes("I want to talk to a person please"));
      row.querySelector(".pl-quote-btn").click();
    });
    assert.match(await agent.$eval("#quote-text", (e) => e.textContent), /cust-0: I want to talk to a person please/);
    await agent.type("#reply", "Sure, I'm here to help.");
    await agent.click("#composer .pl-send");
    await waitText(customer, ".pl-theirs .pl-quote-text", "I want to talk to a person please");
    await waitText(customer, ".pl-from-agent .pl-text", "Sure, I'm here to help.");

    // A canned response: the bot's template in the customer's locale, found by its text, variables filled.
    await agent.type(".wb-canned-search", "thanks for waiting");
    await agent.waitForSelector('.wb-canned-item[data-key="sign_off"]', { timeout: TIMEOUT });
    assert.equal(await agent.$$eval(".wb-canned-item", (l) => l.length), 1, "the search narrows the list");
    await agent.click('.wb-canned-item[data-key="sign_off"]');
    assert.equal(await agent.$eval("#reply", (e) => e.value), "Thanks for waiting, cust-0. I'm agent-1 and I'll take it from here.");
    await agent.click('.wb-canned-search', { clickCount: 3 });
    await agent.keyboard.press("Backspace");
    await agent.type(".wb-canned-search", "order");
    await agent.click('.wb-canned-item[data-key="order_status"]');
    await agent.type('[data-var="order"]', "A-1001");
    await agent.type('[data-var="date"]', "Monday");
    assert.equal(await agent.$eval("#reply", (e) => e.value), "Your order A-1001 ships on Monday.");
    await agent.click("#composer .pl-send");
    await waitText(customer, ".pl-from-agent .pl-text", "Your order A-1001 ships on Monday.");

    // Tag it.
    await agent.type("#tag", "vip");
    await agent.click("#tag-form button");
    await waitText(agent, "#tags", "vip");
    await waitText(agent, ".pl-system", "Tags: vip");
    if (SHOTS) {
      await customer.screenshot({ path: join(SHOTS, "widget-agent.png") });
      await agent.screenshot({ path: join(SHOTS, "workbench.png") });
    }

    // Both pages reload: the same history, in the same order.
    await new Promise((r) => setTimeout(r, 300)); // the batched ACKs go out
    const before = await history(customer, "widget");
    assert.deepEqual(before.map((e) => e[0]), before.map((_, i) => i + 1), "seqs 1..n with no gap");
    assert.deepEqual(await history(agent, "workbench"), before, "the agent and the customer see one history");
    await customer.reload();
    await agent.reload();
    await customer.waitForFunction((n) => window.parleyWidget && window.parleyWidget.view.timeline.items.length >= n, { timeout: TIMEOUT }, before.length);
    await agent.waitForFunction((n) => window.parleyWorkbench && window.parleyWorkbench.active && window.parleyWorkbench.convs.get(window.parleyWorkbench.active).view.timeline.items.length >= n, { timeout: TIMEOUT }, before.length);
    assert.deepEqual(await history(customer, "widget"), before, "the widget after its reload");
    assert.deepEqual(await history(agent, "workbench"), before, "the workbench after its reload");
    await waitText(customer, ".pl-from-agent .pl-text", "Your order A-1001 ships on Monday.");

    // Hand it back: the bot says so in the widget.
    await agent.click("#hand-back");
    await waitText(customer, ".pl-theirs .pl-text", "I'm back. Is there anything else I can help with?");
    await waitText(agent, "#conv-state", "Handed back to the bot");
    await agent.waitForSelector(".wb-tab.wb-done", { timeout: TIMEOUT });
    await noProblems(customer);
    await noProblems(agent);
    await closePage(customer);
    await closePage(agent);
  });

  test("a script-injection attempt in every text field renders as text", async (t) => {
    if (skip) return t.skip(skip);
    const attack = `<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>`;
    const customer = await newPage();
    await customer.goto(WIDGET("cust-1"));
    await customer.waitForSelector(".pl-widget[data-state=open]", { timeout: TIMEOUT });
    await widgetSend(customer, attack);
    // The bot echoes it ("You said: ..."), a bot text with the attack in it.
    await widgetSend(customer, `I need a person ${attack}`);
    await waitText(customer, ".pl-theirs .pl-text", `You said: ${attack}`);
    const agent = await newPage();
    await agent.goto(WORKBENCH("agent-2", "agent2-token"));
    await agent.waitForSelector(".wb-take", { timeout: TIMEOUT });
    // The handoff note carries it into the queue list.
    await waitText(agent, ".wb-note", attack);
    await agent.click(".wb-take");
    await waitText(agent, ".wb-pane .pl-text", `You said: ${attack}`);
    // Quote the attack, answer with it, tag with it, fill a canned variable with it.
    await agent.evaluate((a) => {
      const row = [...document.querySelectorAll(".wb-pane .pl-msg")].find((r) => r.querySelector(".pl-text") && r.querySelector(".pl-text").textContent === a);
      row.querySelector(".pl-quote-btn").click();
    }, attack);
    await agent.type("#reply", attack);
    await agent.click("#composer .pl-send");
    await agent.type(".wb-canned-search", "order_status");
    await agent.click('.wb-canned-item[data-key="order_status"]');
    await agent.type('[data-var="order"]', attack);
    await agent.click("#composer .pl-send");
    await agent.type("#tag", attack);
    await agent.click("#tag-form button");
    await waitText(customer, ".pl-from-agent .pl-quote-text", attack);
    await waitText(customer, ".pl-from-agent .pl-text", `Your order ${attack} ships on`);
    for (const page of [customer, agent]) {
      const r = await page.evaluate(() => ({
        pwned: window.__pwned,
        injected: document.querySelectorAll('img[src="x"], .pl-list script, .wb-queue script').length,
      }));
      assert.equal(r.pwned, undefined, "no injected script ran");
      assert.equal(r.injected, 0, "no injected element exists");
    }
    const shown = await customer.$$eval(".pl-text", (l) => l.map((e) => e.textContent));
    assert.ok(shown.includes(attack), "the customer's own message shows as its characters");
    assert.ok(shown.includes(attack) && shown.filter((s) => s === attack).length >= 2, "the agent's answer too");
    await noProblems(customer);
    await noProblems(agent);
    await closePage(customer);
    await closePage(agent);
  });

  test("a page reloaded in the middle of a send shows the message once", async (t) => {
    if (skip) return t.skip(skip);
    // The page loads through a relay, which then loses every SendAck and push
    // of the message: it is stored, but the page cannot know.
    const relay = await startRelay(gw.url, { http: `http://127.0.0.1:${gw.port}` });
    const page = await newPage();
    try {
      await page.goto(`${relay.http}/widget.html#principal=cust-2&token=cust-token-2`);
      await page.waitForSelector(".pl-widget[data-state=open]", { timeout: TIMEOUT });
      await widgetSend(page, "first");
      await waitText(page, ".pl-card-title", "How can we help?");
      // The network goes away: the widget says it is reconnecting, and a
      // message typed meanwhile goes out once it is back.
      relay.refuse = true;
      relay.cutAll();
      await waitText(page, ".pl-status-bar", "Reconnecting");
      await widgetSend(page, "typed while away");
      relay.refuse = false;
      await page.waitForSelector(".pl-widget[data-state=open]", { timeout: TIMEOUT });
      await waitText(page, ".pl-theirs .pl-text", "You said: typed while away");
      assert.equal(await page.$eval(".pl-status-bar", (e) => e.textContent), "");
      let held = 0;
      relay.onServer = (f) => {
        const c = f.body.case;
        const about = c === "sendAck" || (c === "deliver" && f.body.value.events.some((e) => e.content && e.content.body.case === "text" && e.content.body.value.body === "in flight"));
        return about ? (held++, "drop") : "pass";
      };
      await widgetSend(page, "in flight");
      await page.waitForFunction(() => {
        const rows = JSON.parse(localStorage.getItem("parley.outbox.cust-2") || "[]");
        return rows.length === 1 && document.querySelector(".pl-local");
      }, { timeout: TIMEOUT });
      await new Promise((r) => setTimeout(r, 200));
      assert.ok(held >= 1, "the answer was lost");
      await page.reload();
      relay.onServer = null;
      await page.waitForSelector(".pl-widget[data-state=open]", { timeout: TIMEOUT });
      await page.waitForFunction(() => !localStorage.getItem("parley.outbox.cust-2") && !document.querySelector(".pl-local"), { timeout: TIMEOUT });
      await waitText(page, ".pl-mine .pl-text", "in flight");
      await new Promise((r) => setTimeout(r, 300));
      const rows = await page.$$eval(".pl-mine .pl-text", (l) => l.map((e) => e.textContent).filter((t) => t === "in flight"));
      assert.equal(rows.length, 1, "shown once");
      const stored = (await history(page, "widget")).filter((e) => e[2] === "in flight");
      assert.equal(stored.length, 1, "stored once");
      await noProblems(page);
    } finally {
      await closePage(page);
      await relay.close();
    }
  });

  test("a long history: only what is near the view is in the DOM, older pages load as the reader scrolls up", async (t) => {
    if (skip) return t.skip(skip);
    const { ParleyClient } = await import(join(WEB, "src/client.js"));
    const { WebSocket } = requireWeb("ws");
    const conversation = "long-history-1";
    const page = await newPage();
    await page.goto(WIDGET("cust-3", `&conversation=${conversation}`));
    await page.waitForSelector(".pl-widget[data-state=open]", { timeout: TIMEOUT });
    // Another device of the same customer writes 150 messages; the bot answers each.
    const c = who(3);
    const other = new ParleyClient({ url: gw.url, principal: c.name, token: c.token, role: "customer", device: "phone", WebSocket });
    other.connect();
    await until(() => other.state === "open", "the other device");
    for (let i = 0; i < 150; i++) other.send(conversation, `message ${i}`);
    await Promise.all(other.pending().map((p) => p.done));
    const last = await page.waitForFunction(() => {
      const tl = window.parleyWidget.view.timeline;
      return tl.items.length >= 303 && tl.last;
    }, { timeout: 30000 }).then((h) => h.jsonValue());
    other.close();
    const rendered = await page.$$eval(".pl-list .pl-row", (l) => l.length);
    assert.ok(rendered < 303 / 2, `only the rows near the view are in the DOM: ${rendered} of ${last}`);
    await new Promise((r) => setTimeout(r, 300)); // the batched ACK
    await page.reload();
    await page.waitForFunction((n) => window.parleyWidget && window.parleyWidget.view.timeline.last === n, { timeout: TIMEOUT }, last).catch(async () => {
      throw new Error(`after the reload: ${JSON.stringify(await page.evaluate(() => [window.parleyWidget.view.timeline.first, window.parleyWidget.view.timeline.last]))} want last ${last}`);
    });
    const first = await page.evaluate(() => window.parleyWidget.view.timeline.first);
    assert.equal(first, last - 49, "after a reload, the latest page of 50");
    // Scrolling to the top loads the page before, until seq 1.
    for (let i = 0; i < 12; i++) {
      const f = await page.evaluate(() => window.parleyWidget.view.timeline.first);
      if (f === 1) break;
      // Two frames first: the page that just came in moves the view down at the end of its frame.
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
      await page.evaluate(() => { document.querySelector(".pl-list").scrollTop = 0; });
      await page.waitForFunction((f) => window.parleyWidget.view.timeline.first < f, { timeout: TIMEOUT }, f).catch(async (e) => {
        throw new Error(`stuck at first ${f}: ${JSON.stringify(await page.evaluate(() => { const v = window.parleyWidget.view; const l = document.querySelector(".pl-list"); return { first: v.timeline.first, last: v.timeline.last, complete: v.complete, loading: v.loadingOlder, st: l.scrollTop, sh: l.scrollHeight, state: window.parleyWidget.client.state }; }))}`);
      });
    }
    const items = await page.evaluate(() => window.parleyWidget.view.timeline.items.map((e) => e.seq));
    assert.deepEqual(items, Array.from({ length: last }, (_, i) => i + 1), "the whole history, in order, once");
    await noProblems(page);
    await closePage(page);
  });

  test("an agent works several conversations at once, with unread counts", async (t) => {
    if (skip) return t.skip(skip);
    const customers = [];
    for (const n of [4, 5]) {
      const page = await newPage();
      await page.goto(WIDGET(`cust-${n}`));
      await page.waitForSelector(".pl-widget[data-state=open]", { timeout: TIMEOUT });
      await widgetSend(page, "hello");
      await waitText(page, ".pl-card-title", "How can we help?");
      await widgetSend(page, "a person please");
      await waitText(page, ".pl-theirs .pl-text", "connecting you");
      customers.push(page);
    }
    // An agent with nothing assigned yet, so its tabs are these two.
    const agent = await newPage();
    await agent.goto(WORKBENCH("agent-3", "agent3-token"));
    await agent.waitForFunction(() => document.querySelectorAll(".wb-take").length >= 2, { timeout: TIMEOUT });
    for (const n of [4, 5]) {
      await clickText(agent, ".wb-qitem", `cust-${n}`);
      await agent.evaluate((c) => [...document.querySelectorAll(".wb-qitem")].find((e) => e.textContent.includes(c)).querySelector(".wb-take").click(), `cust-${n}`);
      await agent.waitForFunction((k) => document.querySelectorAll(".wb-tab").length === k, { timeout: TIMEOUT }, n - 3);
      // Its history is in (the agent's own ASSIGNED event is its last), while it is in front.
      await agent.waitForFunction((k) => {
        const c = [...window.parleyWorkbench.convs.values()][k];
        return c && c.view.timeline.items.some((e) => e.kind === "assigned" && e.assignee === "agent-3");
      }, { timeout: TIMEOUT }, n - 4);
    }
    await agent.waitForFunction(() => document.querySelectorAll(".wb-tab").length === 2, { timeout: TIMEOUT });
    // The first one is in front; the second customer writes twice: its tab counts them.
    const tabs = await agent.$$eval(".wb-tab", (l) => l.map((e) => [e.dataset.conversation, e.classList.contains("wb-active")]));
    const back = tabs.find(([, active]) => !active)[0];
    const backPage = customers[(await customers[1].evaluate(() => window.parleyWidget.conversation)) === back ? 1 : 0];
    await widgetSend(backPage, "are you there?");
    await widgetSend(backPage, "hello?");
    await agent.waitForFunction((c) => document.querySelector(`.wb-tab[data-conversation="${c}"] .wb-unread`).textContent === "2", { timeout: TIMEOUT }, back);
    await agent.click(`.wb-tab[data-conversation="${back}"]`);
    assert.equal(await agent.$eval(`.wb-tab[data-conversation="${back}"] .wb-unread`, (e) => e.textContent), "", "read once in front");
    await waitText(agent, `.wb-pane[data-conversation="${back}"] .pl-text`, "hello?");
    // The reply goes to the conversation in front.
    await agent.type("#reply", "Yes, here.");
    await agent.click("#composer .pl-send");
    await waitText(backPage, ".pl-from-agent .pl-text", "Yes, here.");
    const other = customers.find((p) => p !== backPage);
    assert.equal(await other.$$eval(".pl-from-agent", (l) => l.length), 0, "not to the other one");
    await noProblems(agent);
    for (const p of [...customers, agent]) await closePage(p);
  });
});
