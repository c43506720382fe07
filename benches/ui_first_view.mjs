// The web UI's first view against a running Lumen: what the page downloads before its first query, and how
// long it takes from navigation to the first log lines on screen.
//
//   LUMEN_URL=http://127.0.0.1:19900 node benches/ui_first_view.mjs
//
// Env: LUMEN_URL (required); BENCH_QUERY (default {app=~".+"}); BENCH_FROM / BENCH_TO (the range, anything
// the UI's time parser reads; default 1796515200 / 1796515401 = the 2,000,000-line bench store);
// BENCH_RUNS (default 5); CHROMIUM (default /usr/bin/chromium). playwright-core comes from ui/node_modules.
// Prints JSON: the first-view resources (bytes over the wire, decoded bytes, gzip -9 of the decoded bytes)
// and their totals, then the navigation → first log line times of each run (a fresh browser context each,
// so nothing is cached) and their median.
import { createRequire } from "node:module";
import { gzipSync, constants } from "node:zlib";

const require = createRequire(new URL("../ui/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const base = (process.env.LUMEN_URL ?? "").replace(/\/+$/, "");
if (!base) {
  console.error("set LUMEN_URL (a running lumen holding the bench store)");
  process.exit(2);
}
const query = process.env.BENCH_QUERY ?? '{app=~".+"}';
const from = process.env.BENCH_FROM ?? "1796515200";
const to = process.env.BENCH_TO ?? "1796515401";
const runs = Number(process.env.BENCH_RUNS ?? 5);
const hash = "#/logs?" + new URLSearchParams({ from, query, to }).toString().replace(/\+/g, "%20");
const url = base + "/ui/" + hash;

// What the store holds in that range (a sanity check printed with the figures).
const secs = (t) => (/^\d+$/.test(t) ? (Number(t) > 1e11 ? Number(t) / 1000 : Number(t)) : Date.parse(t) / 1000);
const [s, e] = [secs(from), secs(to)];
const cr = await fetch(
  base + "/loki/api/v1/query?" + new URLSearchParams({ query: `sum(count_over_time(${query}[${Math.round(e - s)}s]))`, time: String(e) }),
).then((r) => r.json());
const linesInRange = Number(cr?.data?.result?.[0]?.value?.[1] ?? 0);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});

const isApi = (u) => /\/(loki\/api|api\/v1)\//.test(new URL(u).pathname);
const median = (xs) => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};

async function once(collect) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await ctx.newPage();
  // Stamps (ms since navigation start) when the first log line and the first query go out.
  await page.addInitScript(() => {
    const w = window;
    w.__firstLine = null;
    new MutationObserver((_, mo) => {
      if (document.querySelector(".logline")) {
        w.__firstLine = performance.now();
        mo.disconnect();
      }
    }).observe(document, { childList: true, subtree: true });
  });
  const assets = [];
  let firstApi = null;
  const pending = [];
  page.on("request", (r) => {
    if (isApi(r.url())) {
      firstApi ??= r.url();
      return;
    }
    if (firstApi || !collect) return; // loaded after the first query: not the first view
    pending.push(
      r.response().then(async (resp) => {
        if (!resp) return;
        const sizes = await r.sizes();
        const body = await resp.body();
        assets.push({
          url: r.url().slice(base.length),
          type: r.resourceType(),
          status: resp.status(),
          content_encoding: resp.headers()["content-encoding"] ?? null,
          wire_bytes: sizes.responseHeadersSize + sizes.responseBodySize,
          wire_body_bytes: sizes.responseBodySize,
          decoded_bytes: body.length,
          gzip9_bytes: gzipSync(body, { level: constants.Z_BEST_COMPRESSION }).length,
        });
      }),
    );
  });
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForSelector(".logline", { timeout: 120_000 });
  const wall = Date.now() - t0;
  const inPage = await page.evaluate(() => window.__firstLine);
  const shown = await page.locator(".logline").count();
  await Promise.all(pending);
  await ctx.close();
  return { wall_ms: wall, first_line_ms: Math.round(inPage), lines_rendered: shown, assets };
}

const results = [];
for (let i = 0; i < runs; i++) results.push(await once(i === 0));
await browser.close();

const assets = results[0].assets;
const sum = (k, f = () => true) => assets.filter(f).reduce((a, x) => a + x[k], 0);
const docsScriptsStyles = (x) => ["document", "script", "stylesheet"].includes(x.type);
console.log(
  JSON.stringify(
    {
      url,
      lines_in_range: linesInRange,
      first_view: {
        resources: assets,
        documents_scripts_styles: {
          wire_bytes: sum("wire_bytes", docsScriptsStyles),
          wire_body_bytes: sum("wire_body_bytes", docsScriptsStyles),
          decoded_bytes: sum("decoded_bytes", docsScriptsStyles),
          gzip9_bytes: sum("gzip9_bytes", docsScriptsStyles),
        },
        all_wire_bytes: sum("wire_bytes"),
      },
      navigation_to_first_log_line_ms: {
        runs: results.map((r) => r.first_line_ms),
        median: median(results.map((r) => r.first_line_ms)),
        measured_from: "performance.now() (navigation start) when the first .logline enters the DOM",
      },
      navigation_to_first_log_line_wall_ms: { runs: results.map((r) => r.wall_ms), median: median(results.map((r) => r.wall_ms)) },
      lines_rendered: results[0].lines_rendered,
    },
    null,
    2,
  ),
);
