// After `vite build`: gzip every .html/.js/.css/.svg of dist/ (level 9, deterministic: zlib.gzipSync
// writes no file name and a zero mtime), print the first-view payload and fail over the budget.
import { readdirSync, readFileSync, writeFileSync, statSync, unlinkSync } from "node:fs";
import { join, relative } from "node:path";
import { gzipSync, constants } from "node:zlib";

const dist = new URL("../dist/", import.meta.url).pathname;
const BUDGET = 100 * 1024;

function walk(dir) {
  return readdirSync(dir)
    .sort()
    .flatMap((n) => {
      const p = join(dir, n);
      return statSync(p).isDirectory() ? walk(p) : [p];
    });
}

const gz = new Map();
for (const f of walk(dist)) {
  if (f.endsWith(".gz")) {
    unlinkSync(f);
    continue;
  }
  if (!/\.(html|js|css|svg)$/.test(f)) continue;
  const out = gzipSync(readFileSync(f), { level: constants.Z_BEST_COMPRESSION });
  writeFileSync(f + ".gz", out);
  gz.set(relative(dist, f), out.length);
}

const html = readFileSync(join(dist, "index.html"), "utf8");
const direct = [...html.matchAll(/(?:src|href)="\.\/([^"]+\.(?:js|css))"/g)].map((m) => m[1]);
let total = gz.get("index.html");
console.log(`first view (gzip):\n  index.html ${gz.get("index.html")} B`);
for (const f of direct) {
  const n = gz.get(f);
  if (n === undefined) throw new Error(`index.html loads ${f}, which is not in dist/`);
  total += n;
  console.log(`  ${f} ${n} B`);
}
console.log(`first-view payload: ${total} B gzip (${(total / 1024).toFixed(1)} KiB; budget ${BUDGET / 1024} KiB)`);
const later = [...gz].filter(([f]) => f !== "index.html" && !direct.includes(f));
for (const [f, n] of later) console.log(`  later: ${f} ${n} B gzip`);
if (total > BUDGET) {
  console.error(`first-view payload ${total} B is over the budget of ${BUDGET} B`);
  process.exit(1);
}
