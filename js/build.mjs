// Builds the front end into ../mmviz/static: widget.js (anywidget ESM), widget.css, and standalone.js
// (the exported-page host, with the CSS inlined as text). `node build.mjs --watch` rebuilds on change.
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "..", "mmviz", "static");
const watch = process.argv.includes("--watch");

const common = {
  bundle: true,
  format: "esm",
  target: ["es2022"],
  minify: !watch,
  sourcemap: false,
  legalComments: "none",
  logLevel: "info",
  loader: { ".css": "text" },
};

await mkdir(out, { recursive: true });
await copyFile(join(here, "src", "styles.css"), join(out, "widget.css"));
const builds = [
  { ...common, entryPoints: [join(here, "src", "index.ts")], outfile: join(out, "widget.js") },
  { ...common, entryPoints: [join(here, "src", "standalone.ts")], outfile: join(out, "standalone.js") },
];
if (watch) {
  for (const options of builds) await (await esbuild.context(options)).watch();
} else {
  await Promise.all(builds.map((options) => esbuild.build(options)));
}
