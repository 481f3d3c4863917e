// Shared fixtures of the browser-side tests: a real `parley gateway` process
// on an ephemeral loopback port, a real bot (`parley run`), and a WebSocket
// relay between the client and the gateway that can drop, hold or cut
// frames, for the faults a network causes. The relay is a test tool, not a
// fake peer: every frame it passes comes from the real gateway.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const SRC = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const WEB = join(SRC, "web");
// Packages resolve from web/node_modules (web/package.json holds them).
export const requireWeb = createRequire(join(WEB, "package.json"));
export const PARLEY = process.env.PARLEY_BIN || join(SRC, "build/cli/parley");

const children = new Set();
process.on("exit", () => {
  for (const c of children) c.kill("SIGKILL");
});

/** Waits for a line matching re on a child's stdout; resolves with the match. */
function waitLine(child, re, what, ms = 15000) {
  return new Promise((resolve, reject) => {
    let buf = "";
    let err = "";
    const t = setTimeout(() => reject(new Error(`${what} did not start in ${ms} ms: ${err}`)), ms);
    child.stderr.on("data", (d) => { err += d; });
    child.stdout.on("data", (d) => {
      buf += d;
      const m = buf.match(re);
      if (m) {
        clearTimeout(t);
        resolve(m);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(t);
      reject(new Error(`${what} exited with ${code}: ${err}`));
    });
  });
}

function track(child) {
  children.add(child);
  child.errText = "";
  child.stderr.on("data", (d) => { child.errText = (child.errText + d).slice(-20000); });
  child.on("exit", () => children.delete(child));
  return child;
}

/**
 * SIGTERM, then the exit status: a process that does not stop cleanly (a
 * sanitizer report in the ASan build, say) fails the test that stops it.
 */
async function stopChild(child, what) {
  if (child.exitCode === null && child.signalCode === null) {
    const done = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    const t = setTimeout(() => child.kill("SIGKILL"), 10000);
    await done;
    clearTimeout(t);
  }
  if (child.exitCode !== 0) {
    throw new Error(`${what} exited with ${child.exitCode ?? child.signalCode}: ${child.errText.slice(-4000)}`);
  }
}

/** The principals the tests sign in with. */
export const PRINCIPALS = {
  bot: { name: "webbot", token: "bot-token" },
  agent: { name: "agent-1", token: "agent-token" },
  agent2: { name: "agent-2", token: "agent2-token" },
};
export const customer = (i) => ({ name: `cust-${i}`, token: `cust-token-${i}` });

/**
 * Starts `parley gateway` with the test principals (customers cust-0 ..
 * cust-19). extra: YAML appended (limits:, faults:, web:). Resolves with
 * {port, url, webUrl, dir, stop()}.
 */
export async function startGateway(extra = "") {
  const dir = mkdtempSync(join(tmpdir(), "parley-webtest-"));
  const custs = Array.from({ length: 20 }, (_, i) => customer(i))
    .map((c) => `  - {name: ${c.name}, role: customer, token: ${c.token}}`).join("\n");
  const yaml = `listen: 127.0.0.1
port: 0
data_dir: ${dir}/data
durability: off
bot: webbot
principals:
  - {name: webbot, role: bot, token: bot-token}
  - {name: agent-1, role: agent, token: agent-token, queues: [support]}
  - {name: agent-2, role: agent, token: agent2-token, queues: [support]}
  - {name: agent-3, role: agent, token: agent3-token, queues: [support]}
${custs}
${extra}`;
  writeFileSync(join(dir, "gw.yaml"), yaml);
  const child = track(spawn(PARLEY, ["gateway", "--config", join(dir, "gw.yaml")], { stdio: ["ignore", "pipe", "pipe"] }));
  const m = await waitLine(child, /listening on [^:]+:(\d+)\n(.*\n)?/, "parley gateway");
  const port = Number(m[1]);
  return {
    port,
    banner: m[0],
    url: `ws://127.0.0.1:${port}/`,
    dir,
    child,
    async stop() {
      try {
        await stopChild(child, "parley gateway");
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** Starts `parley run BOTDIR --url URL` and waits until its /readyz says it is connected. */
export async function startBot(url, botDir = join(SRC, "tests/web/bot")) {
  const child = track(spawn(PARLEY, ["run", botDir, "--url", url, "--token", PRINCIPALS.bot.token, "--ops-port", "0"], { stdio: ["ignore", "pipe", "pipe"] }));
  const m = await waitLine(child, /ops listening on [^:]+:(\d+)/, "parley run");
  const ops = `http://127.0.0.1:${m[1]}`;
  await until(async () => {
    try {
      return (await fetch(`${ops}/readyz`)).status === 200;
    } catch {
      return false;
    }
  }, "the bot to be ready");
  return { child, ops, stop: () => stopChild(child, "parley run") };
}

/**
 * A WebSocket relay in front of the gateway. Hooks see each decoded frame
 * and answer "pass" (default), "drop" (the frame is lost) or "cut" (the frame
 * is lost and both sides of that connection are closed abruptly).
 *   relay.onClient = (frame, conn) => ...   client -> gateway
 *   relay.onServer = (frame, conn) => ...   gateway -> client
 *   relay.silent = true                     swallow everything both ways
 *   relay.refuse = true                     close new connections at once
 *   relay.cutAll()                          drop every connection now
 */
export async function startRelay(target, { http: httpBase } = {}) {
  const { WebSocketServer, WebSocket } = requireWeb("ws");
  const { decodeFrame } = await import(join(WEB, "src/proto.js"));
  const relay = { onClient: null, onServer: null, silent: false, conns: new Set(), connections: 0 };
  // With httpBase, plain GETs are passed to the gateway too, so a page
  // loaded through the relay has the relay as its origin (the pages' CSP
  // allows WebSockets to their own origin only).
  const server = createServer(async (req, res) => {
    if (!httpBase) return res.writeHead(404).end();
    try {
      const r = await fetch(httpBase + req.url);
      const headers = Object.fromEntries([...r.headers].filter(([k]) => k !== "content-encoding" && k !== "transfer-encoding"));
      res.writeHead(r.status, headers).end(Buffer.from(await r.arrayBuffer()));
    } catch (e) {
      res.writeHead(502).end(String(e));
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const wss = new WebSocketServer({ server, handleProtocols: () => "parley.v1" });
  relay.url = `ws://127.0.0.1:${server.address().port}/`;
  relay.http = `http://127.0.0.1:${server.address().port}`;
  wss.on("connection", (down) => {
    if (relay.refuse) {
      down.terminate();
      return;
    }
    relay.connections++;
    const up = new WebSocket(target, "parley.v1");
    const conn = { down, up, n: relay.connections, queue: [] };
    relay.conns.add(conn);
    const cut = () => {
      relay.conns.delete(conn);
      down.terminate();
      up.terminate();
    };
    conn.cut = cut;
    up.on("open", () => {
      for (const m of conn.queue) up.send(m);
      conn.queue = null;
    });
    const pass = (hook, data, to) => {
      if (relay.silent) return;
      const verdict = hook ? hook(decodeFrame(new Uint8Array(data)), conn) : "pass";
      if (verdict === "drop") return;
      if (verdict === "cut") return cut();
      if (to === up && conn.queue) conn.queue.push(data);
      else if (to.readyState === 1) to.send(data);
    };
    down.on("message", (d) => pass(relay.onClient, d, up));
    up.on("message", (d) => pass(relay.onServer, d, down));
    down.on("close", () => { relay.conns.delete(conn); up.terminate(); });
    // A silent relay is a network partition: the client does not hear of the close either.
    up.on("close", () => { relay.conns.delete(conn); if (!relay.silent) down.terminate(); });
    down.on("error", () => {});
    up.on("error", () => {});
  });
  relay.cutAll = () => {
    for (const c of [...relay.conns]) c.cut();
  };
  relay.close = () => new Promise((r) => {
    relay.cutAll();
    wss.close(() => server.close(r));
  });
  return relay;
}

/**
 * Launches Debian's Chromium headless with a fresh profile, or returns
 * {skip: reason} when it cannot start. Nothing downloads a browser.
 */
export async function launchChromium() {
  const puppeteer = requireWeb("puppeteer-core");
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  const profile = mkdtempSync(join(tmpdir(), "parley-chromium-"));
  try {
    const browser = await puppeteer.launch({
      executablePath,
      headless: true,
      // Without the background-networking flags Chromium reaches for the
      // network at start, which a closed network refuses.
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        `--user-data-dir=${profile}`, "--window-size=1280,800"],
      userDataDir: profile,
      timeout: 30000,
    });
    const close = browser.close.bind(browser);
    browser.close = async () => {
      await close();
      rmSync(profile, { recursive: true, force: true });
    };
    return { browser };
  } catch (e) {
    rmSync(profile, { recursive: true, force: true });
    return { skip: `Chromium (${executablePath}) cannot start: ${e.message.split("\n")[0]}` };
  }
}

/** Resolves when pred() is true (checked every 10 ms), or rejects after ms with what. */
export async function until(pred, what, ms = 10000) {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A seeded generator of [0, 1) (mulberry32), for reproducible fault runs. */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
