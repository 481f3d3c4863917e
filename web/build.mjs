// Builds web/: generates the protocol code from proto/parley.proto (buf +
// protoc-gen-es), then bundles the client, the widget and the workbench with
// esbuild into OUT (default web/dist), next to the pages and the style sheet.
//   node build.mjs [--out DIR] [--no-gen]
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const outAt = args.indexOf("--out");
const out = resolve(outAt >= 0 ? args[outAt + 1] : join(here, "dist"));

if (!args.includes("--no-gen")) {
  execFileSync(join(here, "node_modules/.bin/buf"), ["generate"], { cwd: here, stdio: "inherit" });
}
mkdirSync(out, { recursive: true });

const common = { bundle: true, minify: true, sourcemap: true, target: ["es2020"], logLevel: "warning", legalComments: "none" };
await esbuild.build({ ...common, entryPoints: [join(here, "src/index.js")], format: "esm", outfile: join(out, "parley-client.js") });
for (const name of ["widget", "workbench", "bench"]) {
  await esbuild.build({ ...common, entryPoints: [join(here, `src/${name}.js`)], format: "iife", outfile: join(out, `${name}.js`) });
}
for (const f of readdirSync(join(here, "pages"))) cpSync(join(here, "pages", f), join(out, f));
console.log(`web: built into ${out}`);
