#!/usr/bin/env node
// The browser rendering benchmark: headless Debian Chromium loads
// bench.html from a real `parley gateway` (the pages' CSP in force) and
// measures, for the widget's and the workbench's way of rendering and for a
// naive one, a 10,000-message history and a burst of 1,000 messages of which
// a tenth arrive out of order (web/src/bench.js says what each figure is).
//
//   node bench/web/run.mjs [--tiny] [--rounds N] [--json FILE] [--md docs/benchmarks.md]
//
// --md replaces (or appends at the end) this benchmark's own section of the
// report, between its markers, and leaves the rest of the file alone.
// Exits 77 when Chromium cannot start, 1 when a run lost or misordered a message.
import { readFileSync, writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { launchChromium, startGateway } from "../../tests/web/harness.mjs";

const args = process.argv.slice(2);
const arg = (name, def) => (args.includes(name) ? args[args.indexOf(name) + 1] : def);
const tiny = args.includes("--tiny");
const rounds = Number(arg("--rounds", tiny ? 1 : 3));
const json = arg("--json", "");
const md = arg("--md", "");
const params = tiny ? { history: 500, burst: 100 } : { history: 10000, burst: 1000 };
const TARGETS = { frameP99: 16.7, domRatio: 5, paintRatio: 3 };

const launched = await launchChromium();
if (launched.skip) {
  console.error(`bench/web: skipped: ${launched.skip}`);
  process.exit(77);
}
const { browser } = launched;
const gw = await startGateway("web: {}\n");
const results = { virtual: [], naive: [] };
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 800 });
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  await page.goto(`http://127.0.0.1:${gw.port}/bench.html`);
  await page.waitForFunction(() => typeof window.runBench === "function");
  // Interleaved rounds, so that both versions see the same machine.
  for (let r = 0; r < rounds; r++) {
    for (const mode of ["virtual", "naive"]) {
      await page.goto(`http://127.0.0.1:${gw.port}/bench.html`);
      await page.waitForFunction(() => typeof window.runBench === "function");
      const res = await page.evaluate((o) => window.runBench(o), { mode, seed: 1 + r, outOfOrder: 0.1, batch: 5, intervalMs: 4, ...params });
      if (!res.ordered || res.painted !== params.burst) throw new Error(`${mode}: a message was lost or out of order: ${JSON.stringify(res)}`);
      results[mode].push(res);
      console.error(`bench/web: round ${r + 1} ${mode}: frame p50 ${res.frameP50.toFixed(1)} p99 ${res.frameP99.toFixed(1)} ms, work p99 ${res.workP99.toFixed(1)} ms, dropped ${res.dropped}, paint p50 ${res.paintP50.toFixed(1)} p99 ${res.paintP99.toFixed(1)} ms, ${res.domNodes} nodes`);
    }
  }
  if (problems.length) throw new Error(`page errors: ${problems.join("; ")}`);
} finally {
  await browser.close();
  await gw.stop();
}

// The median of the rounds, per figure.
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const summary = {};
for (const mode of ["virtual", "naive"]) {
  summary[mode] = {};
  for (const k of ["frameP50", "frameP99", "frameMax", "vsyncP99", "workP50", "workP99", "dropped", "paintP50", "paintP99", "domNodes", "historyMs", "outOfOrder", "frames"]) {
    summary[mode][k] = median(results[mode].map((x) => x[k]));
  }
}
const v = summary.virtual;
const n = summary.naive;
const checks = [
  ["p99 frame time during the burst (in whole vsyncs)", `${v.vsyncP99.toFixed(1)} ms`, `<= ${TARGETS.frameP99} ms`, v.vsyncP99 <= TARGETS.frameP99 + 0.05],
  ["DOM nodes, naive / virtualised", `${(n.domNodes / v.domNodes).toFixed(1)}x`, `>= ${TARGETS.domRatio}x`, n.domNodes / v.domNodes >= TARGETS.domRatio],
  ["p99 arrival-to-paint, naive / virtualised", `${(n.paintP99 / v.paintP99).toFixed(1)}x`, `>= ${TARGETS.paintRatio}x`, n.paintP99 / v.paintP99 >= TARGETS.paintRatio],
];
if (json) writeFileSync(json, JSON.stringify({ params, rounds, summary, results }, null, 2));

const chromium = (await import("node:child_process")).execFileSync(process.env.CHROMIUM || "/usr/bin/chromium", ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
const row = (name, f, unit = "ms") => `| ${name} | ${typeof v[f] === "number" ? +v[f].toFixed(1) : v[f]} ${unit} | ${typeof n[f] === "number" ? +n[f].toFixed(1) : n[f]} ${unit} |`;
const section = `<!-- bench/web: begin -->
## Browser rendering (web/)

\`node bench/web/run.mjs --md docs/benchmarks.md\` (run by \`make bench\`): ${chromium}, headless, on
this machine (${cpus().length} cores, ${cpus()[0].model.trim()}); the median of ${rounds} interleaved rounds.
A conversation of ${params.history} messages, then a burst of ${params.burst} messages arriving ${5} per task every 4 ms,
of which ${v.outOfOrder} arrive after a later one (a tenth held back by 1-20 places). **virtualised** is how the
widget and the workbench render (web/src/virtual-list.js: blocks of 50 rows, only those near the view in the
DOM through an IntersectionObserver, one DOM update per animation frame, insertion by binary search on seq);
**naive** puts every message in the DOM at once as it arrives, after a linear scan for its place, and keeps
the view at the bottom. Both draw rows with the same renderRow (web/src/render.js) and end with every seq in
order. Frame times are the intervals between animation frames during the burst (their sub-millisecond
jitter is the clock's, so the target is checked on intervals rounded to whole 60 Hz vsyncs); frame work runs
from a frame's start to the first task after it (its callbacks, style, layout and paint, and an upper bound:
arrival tasks queued before that task count too); a dropped frame is a
missed vsync; arrival-to-paint runs from the task that brings a message to the first task after the frame
that shows it.

| figure | virtualised | naive |
|---|---|---|
${row("frame time p50", "frameP50")}
${row("frame time p99", "frameP99")}
${row("frame time p99, in whole vsyncs", "vsyncP99")}
${row("longest frame", "frameMax")}
${row("frame work p50", "workP50")}
${row("frame work p99", "workP99")}
${row("dropped frames", "dropped", "")}
${row("arrival-to-paint p50", "paintP50")}
${row("arrival-to-paint p99", "paintP99")}
${row("DOM nodes after the burst", "domNodes", "")}
${row("history of " + params.history + " shown", "historyMs")}

| target | measured | wanted | |
|---|---|---|---|
${checks.map(([a, b, c, ok]) => `| ${a} | ${b} | ${c} | ${ok ? "reached" : "**missed**"} |`).join("\n")}
<!-- bench/web: end -->
`;
if (md) {
  const path = md.startsWith("/") ? md : join(process.cwd(), md);
  let text = readFileSync(path, "utf8");
  const re = /<!-- bench\/web: begin -->[\s\S]*<!-- bench\/web: end -->\n?/;
  text = re.test(text) ? text.replace(re, section) : `${text.replace(/\n*$/, "\n\n")}${section}`;
  writeFileSync(path, text);
  console.error(`bench/web: wrote its section of ${md}`);
} else {
  process.stdout.write(section);
}
