// `parley gateway` serving web/'s built pages: on its own port by default,
// on a configured one with `web.port`, always with the strict
// Content-Security-Policy, and the bot's templates when `web.templates` is set.
import assert from "node:assert/strict";
import { test } from "node:test";
import { SRC, startGateway } from "./harness.mjs";

function csp(res) {
  const v = res.headers.get("content-security-policy") || "";
  return Object.fromEntries(v.split(";").map((d) => d.trim().split(/\s+/)).map(([k, ...v]) => [k, v]));
}

test("the pages share the gateway's port, with a strict CSP", async () => {
  const gw = await startGateway(`web: {templates: ${SRC}/tests/web/bot/templates}\n`);
  try {
    const base = `http://127.0.0.1:${gw.port}`;
    for (const page of ["widget.html", "workbench.html", "widget.js", "workbench.js", "parley.css"]) {
      const res = await fetch(`${base}/${page}`);
      assert.equal(res.status, 200, page);
      const p = csp(res);
      assert.deepEqual(p["default-src"], ["'none'"], page);
      assert.deepEqual(p["script-src"], ["'self'"], `${page}: scripts only from the gateway, nothing inline`);
      assert.deepEqual(p["style-src"], ["'self'"]);
      assert.deepEqual(p["connect-src"], ["'self'"]);
      assert.deepEqual(p["frame-ancestors"], ["'none'"]);
      assert.equal(res.headers.get("x-content-type-options"), "nosniff");
    }
    assert.match((await fetch(`${base}/widget.js`)).headers.get("content-type"), /javascript/);
    const t = await fetch(`${base}/templates/es.yaml`);
    assert.equal(t.status, 200);
    assert.match(await t.text(), /Horario/);
    assert.equal((await fetch(`${base}/nothing.js`)).status, 404);
    // The build's own files next to the pages are not served.
    for (const p of ["Makefile", "CMakeFiles/", "cmake_install.cmake", "npm-ci.stamp"]) {
      assert.equal((await fetch(`${base}/${p}`)).status, 404, p);
    }
  } finally {
    await gw.stop();
  }
});

test("web.port serves them on a port of their own; the CSP names the gateway's WebSocket", async () => {
  const gw = await startGateway("web: {port: 0}\n");
  try {
    const m = (gw.banner || "").match(/web pages on http:\/\/127\.0\.0\.1:(\d+)\//);
    assert.ok(m, `the gateway names the pages' URL: ${gw.banner}`);
    assert.notEqual(Number(m[1]), gw.port);
    const res = await fetch(`http://127.0.0.1:${m[1]}/workbench.html`);
    assert.equal(res.status, 200);
    assert.deepEqual(csp(res)["connect-src"], ["'self'", `ws://127.0.0.1:${gw.port}`]);
    assert.equal((await fetch(`http://127.0.0.1:${gw.port}/workbench.html`)).status, 404, "not on the WebSocket port");
  } finally {
    await gw.stop();
  }
});

test("a bad web: section is a configuration error naming the key and line", async () => {
  const { spawnSync } = await import("node:child_process");
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const { PARLEY } = await import("./harness.mjs");
  const dir = mkdtempSync(join(tmpdir(), "parley-webcfg-"));
  try {
    const base = `listen: 127.0.0.1\nport: 0\ndata_dir: ${dir}/data\nbot: b\nprincipals:\n  - {name: b, role: bot, token: t}\n`;
    for (const [web, want] of [
      ["web: {root: /nonexistent/parley-web}\n", /gw\.yaml:7: web\.root: '\/nonexistent\/parley-web' is not a directory/],
      ["web: {port: 70000}\n", /web\.port/],
      ["web: {colour: blue}\n", /colour/],
    ]) {
      writeFileSync(join(dir, "gw.yaml"), base + web);
      const r = spawnSync(PARLEY, ["gateway", "--config", join(dir, "gw.yaml")], { encoding: "utf8", timeout: 10000 });
      assert.equal(r.status, 2, `${web}: exit status`);
      assert.match(r.stderr, want);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
