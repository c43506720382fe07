// End-to-end check of the web UI against a running Lumen that already holds some data.
//   LUMEN_URL=http://127.0.0.1:9700 LUMEN_E2E_OUT=/tmp/shots node e2e/run.mjs
// Optional: CHROMIUM (default /usr/bin/chromium), LUMEN_E2E_PROMQL (default: the first metric name the
// server knows, else vector(1)).
// Besides driving every view, it compares what the UI shows with the API's own answers (fetched here with
// fetch()): log lines, histogram totals, lines shown before the histogram, a line's context, parsed field
// and metric name suggestions, label-click narrowing, the time picker in UTC and local time, live tail,
// PromQL series and the chart's hover box, SQL rows, MQTT devices, rules and alerts, and a shared URL.
// With LUMEN_AUTH_URL (a server with tokens on), LUMEN_AUTH_TENANT, LUMEN_AUTH_READ_TOKEN and
// LUMEN_AUTH_WRITE_TOKEN it also signs in there and checks that live tail streams over the WebSocket. With
// LUMEN_PROXY_URL (the same server behind a reverse proxy under a path prefix, e.g.
// http://127.0.0.1:8080/lumen/) it loads the UI there, runs a LogQL query and a live tail through the proxy.
// With LUMEN_E2E_DEVICES (JSON: [{labels, values, seen}], seen = the sample time in epoch ms the devices
// published at) the Devices view must list each device with those values and that exact last seen. It expects the data tests/it/ui_browser.rs loads: the Loghub
// samples as {app="<name>", namespace="loghub"} over the last hour, ui_requests_total{instance="a"|"b"} over
// the last 30 minutes, MQTT devices pump1 (north) and pump2 (south) on devices/{site}/{device}/telemetry, and
// its rules: the PromQL group ui-rules (ui:answer recording, UiAlwaysFiring firing with the summary "always
// firing", UiPending pending, UiNever inactive) and the LogQL group ui-logs (UiLoghubErrors, firing per app).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const base = (process.env.LUMEN_URL ?? "").replace(/\/+$/, "");
const out = process.env.LUMEN_E2E_OUT;
if (!base || !out) {
  console.error("set LUMEN_URL (a running lumen with data) and LUMEN_E2E_OUT (a directory for screenshots)");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const origin = new URL(base).origin;
const wsOrigin = origin.replace(/^http/, "ws");

const failures = [];
const requests = [];
const foreign = [];
const pageErrors = [];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
const record = (url) => {
  requests.push(url);
  if (url.startsWith("data:") || url.startsWith("blob:")) return;
  if (!(url.startsWith(origin + "/") || url === origin || url.startsWith(wsOrigin + "/"))) foreign.push(url);
};
function watch(c) {
  c.on("request", (r) => record(r.url()));
  c.on("page", (p) => {
    p.on("websocket", (ws) => record(ws.url()));
    p.on("pageerror", (e) => pageErrors.push(String(e)));
    p.setDefaultTimeout(15_000);
  });
  return c;
}
watch(ctx);
const page = await ctx.newPage();

// ---- the API, asked directly ----
async function apiGet(path, params = {}) {
  const r = await fetch(base + "/" + path + "?" + new URLSearchParams(params));
  const text = await r.text();
  if (!r.ok) throw new Error(`GET ${path} -> ${r.status}: ${text.slice(0, 200)}`);
  return JSON.parse(text);
}
async function apiSql(sql) {
  const r = await fetch(base + "/api/v1/sql", { method: "POST", headers: { "content-type": "text/plain" }, body: sql });
  const text = await r.text();
  if (!r.ok) throw new Error(`POST api/v1/sql -> ${r.status}: ${text.slice(0, 200)}`);
  return JSON.parse(text);
}
const ns = (ms) => String(BigInt(ms) * 1_000_000n);
/** query_range log lines, newest first (the order the UI shows them in). */
async function apiLines(query, start, end, limit = 1000) {
  const r = await apiGet("loki/api/v1/query_range", { query, start: ns(start), end: ns(end), limit, direction: "backward" });
  const es = [];
  for (const s of r.data.result) for (const [t, line] of s.values) es.push({ t: BigInt(t), line, labels: s.stream });
  es.sort((a, b) => (a.t < b.t ? 1 : a.t > b.t ? -1 : 0));
  return es;
}
const labelsText = (l) => "{" + Object.keys(l).sort().map((k) => `${k}=${JSON.stringify(l[k])}`).join(", ") + "}";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `f` (returning null when satisfied, else what is still wrong) until it holds or the time is up. */
async function until(what, f, timeout = 15_000) {
  const t0 = Date.now();
  let last = "";
  for (;;) {
    last = await f().catch((e) => String(e?.message ?? e));
    if (last === null) return;
    if (Date.now() - t0 > timeout) throw new Error(`${what}: ${last}`);
    await sleep(150);
  }
}

/** The text of the log lines the page shows, in order. */
const shownLines = (p = page) => p.$$eval(".logline .msg", (els) => els.map((e) => e.textContent));
/** The "N lines" count above the lines. */
const shownCount = (p = page) =>
  p.$$eval(".view > .muted", (els) => {
    for (const e of els) {
      const m = /^(\d+) lines/.exec(e.textContent.trim());
      if (m) return Number(m[1]);
    }
    return null;
  });
async function busy(p = page) {
  return p.$$eval(".view .muted", (els) => els.some((e) => e.textContent.trim() === "running…"));
}
/** Null when the page shows `want` (line texts) as its first lines, else the first difference. */
async function compareLines(want, p = page) {
  if (await busy(p)) return "still running";
  const got = await shownLines(p);
  const n = Math.min(want.length, 500);
  if (got.length !== n) return `the UI shows ${got.length} lines, the API gave ${want.length} (expected ${n} rendered)`;
  for (let i = 0; i < n; i++) if (got[i] !== want[i]) return `line ${i} differs: UI ${JSON.stringify(got[i])} vs API ${JSON.stringify(want[i])}`;
  return null;
}
const hashUrl = (view, params) => uiBase + "#/" + view + "?" + new URLSearchParams(params).toString().replace(/\+/g, "%20");
let uiBase = base + "/ui/";
const nowS = Math.floor(Date.now() / 1000) * 1000;
const range = { from: String(nowS - 3_600_000), to: String(nowS) }; // the last hour, as epoch ms in the hash

async function step(name, f) {
  const t0 = Date.now();
  try {
    await f();
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failures.push(`${name}: ${e?.message?.split("\n")[0] ?? e}`);
    console.log(`FAIL ${name}: ${e?.message ?? e}`);
  }
  await page.screenshot({ path: join(out, `${name}.png`), fullPage: true }).catch(() => {});
}

async function viewError() {
  const err = page.locator(".error");
  return (await err.count()) ? await err.first().innerText() : null;
}

async function goView(name) {
  await page.click(`header nav a:has-text("${name}")`);
  await page.waitForSelector(`header nav a.active:has-text("${name}")`, { state: "attached" });
}

async function runQuery(text, key = "Enter") {
  const box = page.locator("textarea[data-querybox]");
  await box.fill(text);
  await box.press(key);
}

await step("logs", async () => {
  await page.goto(base + "/");
  await page.waitForSelector("header nav");
  if (!new URL(page.url()).pathname.endsWith("/ui/")) throw new Error(`"/" did not lead to the UI: ${page.url()}`);
  uiBase = page.url().split("#")[0];
  await goView("Logs");
  await runQuery('{app=~".+"}');
  await page.waitForFunction(() => document.querySelectorAll(".logline").length > 0 || document.querySelector(".error"));
  const e = await viewError();
  if (e) throw new Error(`the log query failed: ${e}`);
  const n = await page.locator(".logline").count();
  await page.locator(".logline .head").first().click();
  await page.waitForSelector(".logline .labels .label");
  await page.waitForSelector(".chart canvas");
  if (!page.url().includes("#/logs?") || !decodeURIComponent(page.url()).includes('{app=~".+"}')) throw new Error(`the query is not in the URL: ${page.url()}`);
  console.log(`     ${n} log lines shown`);
});

// The histogram answers the UI received (query_range with sum by (detected_level) (count_over_time(...))).
const histAnswers = new Map();
page.on("response", async (r) => {
  const u = new URL(r.url());
  const q = u.searchParams.get("query") ?? "";
  if (!u.pathname.endsWith("/loki/api/v1/query_range") || !/^sum( by \(detected_level\) )?\(count_over_time\(/.test(q) || !r.ok()) return;
  try {
    histAnswers.set(q, await r.json());
  } catch {
    /* a navigation dropped the body */
  }
});

const LOGQL = '{app="apache"}';
let apiApache = null;
await step("logs-vs-api", async () => {
  await page.goto(hashUrl("logs", range));
  await page.waitForSelector("textarea[data-querybox]");
  await runQuery(LOGQL);
  apiApache = await apiLines(LOGQL, +range.from, +range.to, 1000);
  if (!apiApache.length) throw new Error(`the API has no lines for ${LOGQL} in the last hour`);
  const want = apiApache.map((e) => e.line);
  await until("the UI's lines differ from query_range's", () => compareLines(want));
  const n = await shownCount();
  if (n !== apiApache.length) throw new Error(`the UI counts ${n} lines, query_range returned ${apiApache.length}`);
  console.log(`     ${LOGQL}: the first ${Math.min(500, want.length)} of ${n} lines equal query_range's (limit 1000, backward)`);
});

await step("histogram-vs-api", async () => {
  const span = (+range.to - +range.from) / 1000;
  const r = await apiGet("loki/api/v1/query", { query: `sum(count_over_time(${LOGQL}[${span}s]))`, time: String(+range.to / 1000) });
  const want = r.data.result.length ? Number(r.data.result[0].value[1]) : 0;
  let got = null;
  await until("the histogram's bars do not add up to the API's count", async () => {
    if (await busy()) return "still running";
    const items = await page.$$eval(".view > .legend .item", (els) => els.map((e) => e.textContent.trim()));
    if (!items.length) return "no histogram legend";
    got = items.reduce((a, t) => a + Number(/(\d+)$/.exec(t)?.[1] ?? NaN), 0);
    return got === want ? null : `bars sum to ${got} (${items.join(", ")}), sum(count_over_time(${LOGQL}[${span}s])) = ${want}`;
  });
  await page.waitForSelector(".chart canvas");
  // The histogram answer the UI drew from must add up the same.
  const key = [...histAnswers.keys()].reverse().find((q) => q.includes(LOGQL));
  if (!key) throw new Error("the UI made no histogram query for " + LOGQL);
  const sum = histAnswers.get(key).data.result.reduce((a, s) => a + s.values.reduce((b, [, v]) => b + Number(v), 0), 0);
  if (sum !== want) throw new Error(`the histogram query ${key} sums to ${sum}, the API count is ${want}`);
  console.log(`     bars add up to ${got} = sum(count_over_time(${LOGQL}[${span}s])) = the histogram query's own sum`);
});

// The lines show before the histogram: with the histogram's answer held back, the lines are on screen and
// the histogram's place is kept; once it comes, the bars replace the placeholder.
await step("lines-before-histogram", async () => {
  let release;
  const held = new Promise((r) => (release = r));
  const isHist = (u) => /^sum( by \(detected_level\) )?\(count_over_time\(/.test(new URL(u).searchParams.get("query") ?? "");
  const hold = async (route) => {
    if (!isHist(route.request().url())) return route.continue();
    await held;
    await route.continue().catch(() => {});
  };
  await page.route("**/loki/api/v1/query_range?**", hold);
  try {
    const want = (await apiLines('{app="hadoop"}', +range.from, +range.to, 1000)).map((e) => e.line);
    await page.goto(hashUrl("logs", { ...range, query: '{app="hadoop"}' }));
    await until("the lines of {app=\"hadoop\"} did not show while the histogram was held back", async () => {
      if (await busy()) return "running";
      return (await compareLines(want)) ?? null;
    }, 10_000);
    if (!(await page.locator(".chart.pending").count())) throw new Error("no placeholder keeps the histogram's place");
    if (await page.locator(".chart canvas").count()) throw new Error("a chart is drawn before its answer came");
  } finally {
    release();
  }
  await page.waitForSelector(".chart canvas");
  await page.unroute("**/loki/api/v1/query_range?**", hold);
  if (await page.locator(".chart.pending").count()) throw new Error("the placeholder stays after the histogram came");
  console.log("     the lines showed while the histogram query was held back; its bars came after");
});

// The lines around a line: the UI's context of a line of {app="apache"} against the whole stream, read from
// query_range (the Loghub lines are a second apart, so "before" and "after" are unambiguous).
await step("context-vs-api", async () => {
  await page.goto(hashUrl("logs", { ...range, query: LOGQL }));
  await until("the UI's lines differ from query_range's", () => compareLines(apiApache.map((e) => e.line)));
  const pick = 20; // newest first: 20 newer lines exist, so 10 after it
  const line = page.locator(".logline").nth(pick);
  await line.locator(".head").click();
  const ns = (await line.locator(".labels .muted").last().textContent()).replace(/\s*ns$/, "").trim();
  await line.locator("button.context-toggle").click();
  const stream = await apiLines('{app="apache", namespace="loghub"}', +range.from - 7_200_000, +range.to + 3_600_000, 5000);
  stream.reverse(); // oldest first
  const i = stream.findIndex((e) => e.t === BigInt(ns));
  if (i < 10 || i + 10 >= stream.length) throw new Error(`line ${ns} is at ${i} of the ${stream.length} lines of its stream: no 10 lines each way`);
  const want = { before: stream.slice(i - 10, i).map((e) => e.line), self: stream[i].line, after: stream.slice(i + 1, i + 11).map((e) => e.line) };
  await until("the context differs from the stream's neighbouring lines", async () => {
    const got = await line.evaluate((el) => ({
      before: [...el.querySelectorAll(".context .ctxline.before .text")].map((x) => x.textContent),
      self: el.querySelector(".context .ctxline.self .text")?.textContent,
      after: [...el.querySelectorAll(".context .ctxline.after .text")].map((x) => x.textContent),
    }));
    return JSON.stringify(got) === JSON.stringify(want) ? null : `the UI shows ${JSON.stringify(got)}, the stream has ${JSON.stringify(want)}`;
  });
  await page.screenshot({ path: join(out, "context.png"), fullPage: true }).catch(() => {});
  // More each way.
  await line.locator('.context button:has-text("more each way")').click();
  await until("the context did not grow to 20 lines each way", async () => {
    const n = await line.evaluate((el) => [el.querySelectorAll(".ctxline.before").length, el.querySelectorAll(".ctxline.after").length]);
    return n[0] === 20 && n[1] === 20 ? null : `${n[0]} before, ${n[1]} after`;
  });
  console.log(`     the line at ${ns}: the 10 lines before and after it equal its stream's, from query_range; 20 each way after "more"`);
});

// Autocomplete of parsed field names: logfmt lines pushed here, the UI's suggestions after "| " against
// /loki/api/v1/detected_fields.
await step("autocomplete-field", async () => {
  const t = Date.now();
  const values = [0, 1, 2, 3, 4].map((i) => [ns(t - 60_000 + i * 1000), `level=info user=u${i} took_ms=${10 + i} path=/api/${i}`]);
  const r = await fetch(base + "/loki/api/v1/push", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ streams: [{ stream: { app: "e2e-fields" }, values }] }),
  });
  if (r.status !== 204) throw new Error(`push -> ${r.status}: ${await r.text()}`);
  await page.goto(hashUrl("logs", { from: "now-1h", to: "now" }));
  const sel = '{app="e2e-fields"}';
  const api = await apiGet("loki/api/v1/detected_fields", { query: sel, start: ns(t - 3_600_000), end: ns(t + 60_000) });
  const fields = api.fields.map((f) => f.label);
  if (!fields.includes("user")) throw new Error(`detected_fields has no "user": ${JSON.stringify(api)}`);
  const box = page.locator("textarea[data-querybox]");
  await box.fill(`${sel} | logfmt | `);
  await box.press("End");
  await box.type("us");
  await until("no suggestion of the detected field user", async () => {
    const items = await page.$$eval(".suggest li", (els) => els.map((e) => e.textContent));
    const want = fields.filter((f) => f.startsWith("us") && f !== "us");
    return JSON.stringify(items) === JSON.stringify(want) ? null : `the UI offers ${JSON.stringify(items)}, detected_fields gives ${JSON.stringify(want)}`;
  });
  await box.press("Tab");
  const v = await box.inputValue();
  if (v !== `${sel} | logfmt | user`) throw new Error(`Tab made the query ${JSON.stringify(v)}`);
  // All the fields right after a pipe.
  await box.fill(`${sel} | logfmt | `);
  await box.press("End");
  await box.type(" ");
  await box.press("Backspace");
  await until("the fields offered after a pipe differ from detected_fields", async () => {
    const items = await page.$$eval(".suggest li", (els) => els.map((e) => e.textContent));
    return JSON.stringify(items) === JSON.stringify(fields.slice(0, 30)) ? null : `the UI offers ${JSON.stringify(items)}, detected_fields gives ${JSON.stringify(fields)}`;
  });
  await page.screenshot({ path: join(out, "autocomplete-field.png"), fullPage: true }).catch(() => {});
  await box.press("Escape");
  console.log(`     after "| " the UI offers ${fields.join(", ")} (= detected_fields); "us" + Tab gave ${v}`);
});

let narrowed = null;
await step("label-click", async () => {
  await runQuery('{namespace="loghub"}');
  await until("no lines for {namespace=\"loghub\"}", async () =>
    !(await busy()) && (await page.locator(".logline").count()) > 0 && decodeURIComponent(page.url()).includes('{namespace="loghub"}') ? null : "waiting",
  );
  const first = page.locator(".logline").first();
  await first.locator(".head").click();
  const label = first.locator('.labels .label:has(b:text-is("app"))');
  const value = (await label.locator(".value").textContent()).trim();
  await label.locator(".value").click();
  const matcher = `app=${JSON.stringify(value)}`;
  await until("the query box did not take the clicked label", async () => {
    const v = await page.locator("textarea[data-querybox]").inputValue();
    return v.includes(matcher) && v.includes('namespace="loghub"') ? null : `the query box holds ${JSON.stringify(v)}`;
  });
  narrowed = await page.locator("textarea[data-querybox]").inputValue();
  const api = await apiLines(narrowed, +range.from, +range.to, 1000);
  const bad = api.filter((e) => e.labels.app !== value);
  if (!api.length || bad.length) throw new Error(`the API answers ${narrowed} with ${api.length} lines, ${bad.length} without ${matcher}`);
  await until("the narrowed results differ from the API's", () => compareLines(api.map((e) => e.line)));
  // Every line shown carries the label: open them all and read their labels.
  await page.$$eval(".logline:not(.open) .head", (els) => els.forEach((e) => e.click()));
  await until("not every line opened", async () =>
    (await page.locator(".logline .labels").count()) === (await page.locator(".logline").count()) ? null : "opening",
  );
  const apps = await page.$$eval(".logline .labels", (els) =>
    els.map((l) => [...l.querySelectorAll(".label")].find((x) => x.querySelector("b")?.textContent === "app")?.querySelector(".value")?.textContent),
  );
  const wrong = apps.filter((a) => a !== value);
  if (wrong.length) throw new Error(`${wrong.length} of ${apps.length} lines do not carry ${matcher}: ${[...new Set(wrong)].join(", ")}`);
  console.log(`     clicked app=${value}: the query became ${narrowed}; all ${apps.length} lines shown carry it, as the API's ${api.length}`);
});

await step("shared-url", async () => {
  if (!narrowed) throw new Error("no query to share (label-click failed)");
  const url = page.url();
  const want = await shownLines();
  const ctx2 = watch(await browser.newContext({ viewport: { width: 1280, height: 860 } }));
  const p2 = await ctx2.newPage();
  try {
    await p2.goto(url);
    await p2.waitForSelector("textarea[data-querybox]");
    const v = await p2.locator("textarea[data-querybox]").inputValue();
    if (v !== narrowed) throw new Error(`the shared URL's query box holds ${JSON.stringify(v)}, not ${JSON.stringify(narrowed)}`);
    await until("the shared URL shows other lines", () => compareLines(want, p2));
    const [c1, c2] = [await shownCount(), await shownCount(p2)];
    if (c1 !== c2) throw new Error(`line counts differ: ${c1} vs ${c2} on the shared URL`);
    await p2.screenshot({ path: join(out, "shared-url-new-page.png"), fullPage: true }).catch(() => {});
    console.log(`     ${url.slice(url.indexOf("#"))} in a fresh context: same query, same ${want.length} lines`);
  } finally {
    await ctx2.close();
  }
});

// The time picker, in a browser whose zone is not UTC (Asia/Kolkata, +05:30): UTC chosen, an absolute range
// typed into its date-time inputs becomes that range in the URL (epoch ms) and the button names it in UTC;
// back in the browser's zone, the button shows the same instants in local time.
await step("time-picker", async () => {
  const ctx3 = watch(await browser.newContext({ viewport: { width: 1280, height: 860 }, timezoneId: "Asia/Kolkata" }));
  const p3 = await ctx3.newPage();
  try {
    await p3.goto(hashUrl("logs", { query: LOGQL, from: "now-1h", to: "now" }));
    await p3.click(".timepicker > button");
    await p3.selectOption(".popover .tz select", "utc");
    await p3.fill('.popover input[name="abs-from"]', "2026-03-04T05:06:07");
    await p3.fill('.popover input[name="abs-to"]', "2026-03-04T06:07:08");
    await p3.click('.popover button:has-text("Apply absolute")');
    const [from, to] = [String(Date.UTC(2026, 2, 4, 5, 6, 7)), String(Date.UTC(2026, 2, 4, 6, 7, 8))];
    await until("the absolute range is not in the URL", async () => {
      const q = new URLSearchParams(new URL(p3.url()).hash.split("?")[1] ?? "");
      return q.get("from") === from && q.get("to") === to ? null : `from=${q.get("from")} to=${q.get("to")}, want ${from} and ${to}`;
    });
    const button = async () => (await p3.locator(".timepicker > button").innerText()).trim();
    // The hash changes first and the button renders after it: wait for the text, not only the URL.
    const utcWant = "2026-03-04 05:06:07 → 2026-03-04 06:07:08 UTC ▾";
    await until("in UTC the range button does not name the range", async () => {
      const text = await button();
      return text === utcWant ? null : `it says ${JSON.stringify(text)}`;
    });
    const utc = await button();
    await p3.screenshot({ path: join(out, "time-picker-utc.png") }).catch(() => {});
    await p3.click(".timepicker > button");
    await p3.selectOption(".popover .tz select", "local");
    await p3.click(".timepicker > button");
    const localWant = "2026-03-04 10:36:07 → 2026-03-04 11:37:08 ▾";
    await until("in Asia/Kolkata the range button does not name the range", async () => {
      const text = await button();
      return text === localWant ? null : `it says ${JSON.stringify(text)}`;
    });
    const local = await button();
    console.log(`     05:06:07–06:07:08 typed in UTC → from=${from}&to=${to}; the button says ${utc}, then in the browser's zone ${local}`);
  } finally {
    await ctx3.close();
  }
});

await step("live-tail", async () => {
  await page.goto(hashUrl("logs", { query: '{app="e2e-tail"}', from: "now-5m", to: "now" }));
  await page.waitForSelector('button:has-text("▶ Live")');
  await until("the query did not settle", async () => ((await busy()) ? "running" : null));
  await page.click('button:has-text("▶ Live")');
  await page.waitForSelector('.muted:has-text("tail: live")');
  const probe = `tail-probe-${Math.random().toString(36).slice(2)}`;
  const t0 = Date.now();
  const r = await fetch(base + "/loki/api/v1/push", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ streams: [{ stream: { app: "e2e-tail" }, values: [[ns(Date.now()), probe]] }] }),
  });
  if (r.status !== 204) throw new Error(`push -> ${r.status}: ${await r.text()}`);
  await until(`the pushed line ${probe} did not show in live tail`, async () => ((await shownLines()).includes(probe) ? null : "not yet"), 10_000);
  const ms = Date.now() - t0;
  await page.screenshot({ path: join(out, "live-tail.png"), fullPage: true }).catch(() => {});
  await page.click('button:has-text("■ Stop tail")');
  console.log(`     ${probe} shown ${ms} ms after the push`);
});

// Behind a reverse proxy under a path prefix: the UI loads from there, asks everything of the prefix (no
// request goes around the proxy), runs a LogQL query and live-tails over a WebSocket through the proxy.
const proxyUrl = process.env.LUMEN_PROXY_URL ?? "";
await step("behind-proxy", async () => {
  if (!proxyUrl) throw new Error("LUMEN_PROXY_URL (the server behind a reverse proxy under a path prefix) is not set");
  const prefix = proxyUrl.endsWith("/") ? proxyUrl : proxyUrl + "/";
  const wsPrefix = prefix.replace(/^http/, "ws");
  const ctxP = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const outside = [];
  const sockets = [];
  const polls = [];
  ctxP.on("request", (r) => {
    if (!r.url().startsWith(prefix)) outside.push(r.url());
  });
  const p = await ctxP.newPage();
  p.setDefaultTimeout(15_000);
  p.on("pageerror", (e) => pageErrors.push(String(e)));
  p.on("request", (r) => {
    const u = new URL(r.url());
    if (u.pathname.endsWith("/loki/api/v1/query_range") && u.searchParams.get("direction") === "forward") polls.push(r.url());
  });
  p.on("websocket", (ws) => {
    const s = { url: ws.url(), frames: [] };
    sockets.push(s);
    if (!ws.url().startsWith(wsPrefix)) outside.push(ws.url());
    ws.on("framereceived", (f) => s.frames.push(String(f.payload)));
  });
  try {
    await p.goto(prefix);
    await p.waitForSelector("header nav");
    if (!p.url().startsWith(prefix + "ui/")) throw new Error(`${prefix} did not lead to ${prefix}ui/: ${p.url()}`);
    const ui = p.url().split("#")[0];
    const hash = (params) => ui + "#/logs?" + new URLSearchParams(params).toString().replace(/\+/g, "%20");
    await p.goto(hash({ ...range, query: LOGQL }));
    const want = (await apiLines(LOGQL, +range.from, +range.to, 1000)).map((e) => e.line);
    await until(`the lines of ${LOGQL} through the proxy differ from query_range's`, async () => {
      const err = (await p.locator(".error").count()) ? await p.locator(".error").first().innerText() : null;
      return err ? `the query failed: ${err}` : compareLines(want, p);
    });
    await p.goto(hash({ query: '{app="e2e-proxy-tail"}', from: "now-5m", to: "now" }));
    await p.waitForSelector('button:has-text("▶ Live")');
    await until("the query did not settle", async () => ((await busy(p)) ? "running" : null));
    await p.click('button:has-text("▶ Live")');
    await p.waitForSelector('.muted:has-text("tail: live")');
    const probe = `proxy-tail-probe-${Math.random().toString(36).slice(2)}`;
    const t0 = Date.now();
    const r = await fetch(prefix + "loki/api/v1/push", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ streams: [{ stream: { app: "e2e-proxy-tail" }, values: [[ns(Date.now()), probe]] }] }),
    });
    if (r.status !== 204) throw new Error(`push through the proxy -> ${r.status}: ${await r.text()}`);
    await until(`the pushed line ${probe} did not show in live tail behind the proxy`, async () => ((await shownLines(p)).includes(probe) ? null : `not yet (${await p.locator('.muted:has-text("tail:")').textContent().catch(() => "?")})`), 10_000);
    const ms = Date.now() - t0;
    const tail = sockets.filter((s) => s.url.startsWith(wsPrefix + "loki/api/v1/tail"));
    if (!tail.some((s) => s.frames.some((f) => f.includes(probe)))) throw new Error(`no tail WebSocket under ${wsPrefix} carried ${probe}: ${JSON.stringify(sockets.map((s) => s.url))}`);
    if (polls.length) throw new Error(`the UI polled query_range ${polls.length} times instead of tailing over the WebSocket`);
    if (outside.length) throw new Error(`requests around the proxy: ${[...new Set(outside)].join(", ")}`);
    await p.screenshot({ path: join(out, "behind-proxy.png"), fullPage: true }).catch(() => {});
    await p.click('button:has-text("■ Stop tail")');
    console.log(`     under ${prefix}: ${want.length} lines of ${LOGQL} = query_range's; ${probe} came over ${tail[0].url} ${ms} ms after the push`);
  } finally {
    await ctxP.close();
  }
});

// With tokens on, the live tail is a WebSocket that carries the token as subprotocols, not polling.
const authBase = (process.env.LUMEN_AUTH_URL ?? "").replace(/\/+$/, "");
await step("live-tail-token", async () => {
  if (!authBase) throw new Error("LUMEN_AUTH_URL (a server with tokens on) is not set");
  const [tenant, reader, writer] = [process.env.LUMEN_AUTH_TENANT, process.env.LUMEN_AUTH_READ_TOKEN, process.env.LUMEN_AUTH_WRITE_TOKEN];
  const authOrigin = new URL(authBase).origin;
  const ctx2 = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  ctx2.on("request", (r) => {
    if (!r.url().startsWith(authOrigin + "/")) foreign.push(r.url());
  });
  const p2 = await ctx2.newPage();
  p2.setDefaultTimeout(15_000);
  p2.on("pageerror", (e) => pageErrors.push(String(e)));
  const sockets = [];
  const polls = [];
  p2.on("request", (r) => {
    const u = new URL(r.url());
    if (u.pathname.endsWith("/loki/api/v1/query_range") && u.searchParams.get("direction") === "forward") polls.push(r.url());
  });
  p2.on("websocket", (ws) => {
    const s = { url: ws.url(), frames: [], closed: false };
    sockets.push(s);
    ws.on("framereceived", (f) => s.frames.push(String(f.payload)));
    ws.on("close", () => (s.closed = true));
  });
  try {
    await p2.goto(authBase + "/ui/#/logs?" + new URLSearchParams({ query: '{app="e2e-tail-auth"}', from: "now-5m", to: "now" }).toString().replace(/\+/g, "%20"));
    // The first query answers 401: the UI asks for the tenant and token.
    await p2.waitForSelector('.modal input[name="token"]');
    await p2.fill('.modal input[name="tenant"]', tenant);
    await p2.fill('.modal input[name="token"]', reader);
    await p2.click('.modal button[type="submit"]');
    await p2.waitForSelector(".modal", { state: "detached" });
    await until("the signed-in query did not settle", async () => ((await busy(p2)) ? "running" : (await p2.locator(".error").count()) ? await p2.locator(".error").innerText() : null));
    await p2.click('button:has-text("▶ Live")');
    await p2.waitForSelector('.muted:has-text("tail: live")');
    const probe = `tail-token-probe-${Math.random().toString(36).slice(2)}`;
    const t0 = Date.now();
    const r = await fetch(authBase + "/loki/api/v1/push", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${writer}` },
      body: JSON.stringify({ streams: [{ stream: { app: "e2e-tail-auth" }, values: [[ns(Date.now()), probe]] }] }),
    });
    if (r.status !== 204) throw new Error(`push -> ${r.status}: ${await r.text()}`);
    await until(`the pushed line ${probe} did not show in live tail`, async () => ((await shownLines(p2)).includes(probe) ? null : `not yet (tail: ${await p2.locator('.muted:has-text("tail:")').textContent().catch(() => "?")})`), 10_000);
    const ms = Date.now() - t0;
    const tail = sockets.filter((s) => s.url.includes("/loki/api/v1/tail"));
    if (!tail.length) throw new Error("the UI opened no tail WebSocket");
    if (!tail.some((s) => s.frames.some((f) => f.includes(probe)))) throw new Error(`no tail WebSocket frame carried ${probe}`);
    if (polls.length) throw new Error(`the UI polled query_range ${polls.length} times instead of using the WebSocket`);
    if (tail.some((s) => s.url.includes(reader))) throw new Error("the token is in the WebSocket's URL");
    await p2.screenshot({ path: join(out, "live-tail-token.png"), fullPage: true }).catch(() => {});
    console.log(`     signed in as ${tenant}: ${probe} arrived in a frame of the tail WebSocket and showed ${ms} ms after the push; no polling`);
  } finally {
    await ctx2.close();
  }
});

await step("metrics", async () => {
  await goView("Metrics");
  let q = process.env.LUMEN_E2E_PROMQL;
  if (!q) {
    await page.click('button:has-text("Metrics explorer")');
    await page.waitForFunction(() => document.querySelector(".explorer li") || document.querySelector(".explorer .muted"));
    const first = page.locator(".explorer li code").first();
    q = (await first.count()) ? await first.innerText() : "vector(1)";
  }
  await runQuery(q);
  await page.waitForFunction(() => document.querySelector(".chart canvas") || document.querySelector(".error"));
  const e = await viewError();
  if (e) throw new Error(`the PromQL query ${q} failed: ${e}`);
  await page.waitForSelector(".legend .item");
  console.log(`     graphed ${q}`);
});

await step("promql-vs-api", async () => {
  const q = "ui_requests_total";
  const from = String(nowS - 2_400_000);
  await page.goto(hashUrl("metrics", { query: q, from, to: range.to }));
  const r = await apiGet("api/v1/query_range", { query: q, start: String(+from / 1000), end: String(+range.to / 1000), step: "15" });
  const want = r.data.result.map((s) => labelsText(s.metric)).sort();
  if (want.length !== 2) throw new Error(`the API gives ${want.length} series for ${q}, not 2: ${want.join(" ")}`);
  await until("the chart's series differ from the API's", async () => {
    if (await busy()) return "still running";
    if (!(await page.locator(".chart canvas").count())) return "no chart";
    const got = (await page.$$eval(".legend .item", (els) => els.map((e) => e.textContent.trim()))).sort();
    return JSON.stringify(got) === JSON.stringify(want) ? null : `legend ${JSON.stringify(got)}, API ${JSON.stringify(want)}`;
  });
  console.log(`     ${q}: legend = API series = ${want.join(" ")}`);
});

// Hovering the chart shows the time under the cursor and each series' value there, as the API gives them.
await step("chart-hover", async () => {
  const q = "ui_requests_total";
  const from = String(nowS - 2_400_000);
  await page.goto(hashUrl("metrics", { query: q, from, to: range.to }));
  await until("no chart", async () => ((await busy()) ? "running" : (await page.locator(".chart canvas").count()) ? null : "no chart"));
  const over = page.locator(".chart .u-over").first();
  const box = await over.boundingBox();
  await page.mouse.move(box.x + box.width * 0.6, box.y + box.height / 2);
  await page.waitForSelector(".chart .hover .time", { state: "visible" });
  const tip = await page.$eval(".chart .hover", (el) => ({
    time: el.querySelector(".time").textContent,
    rows: [...el.children].slice(1).map((r) => r.textContent),
  }));
  // The UI's step for this range (40 min / 250 points → 10 s) and the API's values at the time shown.
  const r = await apiGet("api/v1/query_range", { query: q, start: String(+from / 1000), end: String(+range.to / 1000), step: "10" });
  const t = Date.parse(tip.time.replace(" ", "T")) / 1000;
  const want = r.data.result
    .map((s) => [s.values.find(([x]) => x === t)?.[1], labelsText(s.metric)])
    .filter(([v]) => v !== undefined)
    .map(([v, l]) => `${Number(v).toLocaleString("en-US")} ${l}`)
    .sort();
  if (!want.length) throw new Error(`the API has no value at ${tip.time} (${t})`);
  if (JSON.stringify([...tip.rows].sort()) !== JSON.stringify(want)) throw new Error(`the hover box shows ${JSON.stringify(tip)}, the API has ${JSON.stringify(want)} at ${t}`);
  await page.screenshot({ path: join(out, "chart-hover.png"), fullPage: true }).catch(() => {});
  console.log(`     at ${tip.time}: ${tip.rows.join("; ")} (= query_range)`);
});

// Autocomplete of metric names in the PromQL box, from /api/v1/label/__name__/values.
await step("autocomplete-metric", async () => {
  const names = (await apiGet("api/v1/label/__name__/values")).data;
  const want = names.filter((n) => n.startsWith("ui_req") && n !== "ui_req");
  if (!want.includes("ui_requests_total")) throw new Error(`the API has no ui_requests_total: ${JSON.stringify(names)}`);
  const box = page.locator("textarea[data-querybox]");
  await box.fill("rate(");
  await box.press("End");
  await box.type("ui_req");
  await until("the metric names offered differ from the API's", async () => {
    const items = await page.$$eval(".suggest li", (els) => els.map((e) => e.textContent));
    return JSON.stringify(items) === JSON.stringify(want.slice(0, 30)) ? null : `the UI offers ${JSON.stringify(items)}, the API ${JSON.stringify(want)}`;
  });
  await box.press("Escape");
  console.log(`     "rate(ui_req" offers ${want.join(", ")}`);
});

await step("sql", async () => {
  await goView("SQL");
  await runQuery("SELECT count(*) AS n FROM logs", "Control+Enter");
  await page.waitForFunction(() => [...document.querySelectorAll("th")].some((th) => th.textContent.startsWith("n ")) || document.querySelector(".error"));
  const e = await viewError();
  if (e) throw new Error(`the SQL query failed: ${e}`);
  const v = await page.locator("tbody td").first().innerText();
  if (!/^\d+$/.test(v.trim())) throw new Error(`count(*) is not a number: ${v}`);
  console.log(`     count(*) = ${v}`);
});

await step("sql-vs-api", async () => {
  const sql = "SELECT app, count(*) AS n FROM logs GROUP BY app ORDER BY app";
  await runQuery(sql, "Control+Enter");
  const r = await apiSql(sql);
  const cell = (v) => (v === null || v === undefined ? "NULL" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const cols = r.columns.map((c) => c.name);
  const want = r.rows.map((row) => cols.map((c) => cell(row[c])));
  if (want.length < 16) throw new Error(`the API gives ${want.length} rows, expected the 16 Loghub apps at least`);
  await until("the SQL table differs from POST /api/v1/sql", async () => {
    if (await busy()) return "still running";
    const head = await page.$$eval("main th", (els) => els.map((e) => e.textContent.split(" · ")[0]));
    if (JSON.stringify(head) !== JSON.stringify(cols)) return `columns ${JSON.stringify(head)} vs ${JSON.stringify(cols)}`;
    const got = await page.$$eval("main tbody tr", (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent)));
    if (got.length !== want.length) return `${got.length} rows vs ${want.length}`;
    const i = got.findIndex((row, i) => JSON.stringify(row) !== JSON.stringify(want[i]));
    return i < 0 ? null : `row ${i}: ${JSON.stringify(got[i])} vs ${JSON.stringify(want[i])}`;
  });
  console.log(`     ${want.length} rows equal the API's (${want.slice(0, 3).map((r) => r.join("=")).join(", ")}, …)`);
});

await step("devices", async () => {
  await goView("Devices");
  await page.waitForFunction(() => document.querySelector("main table") || document.querySelector("main .empty") || document.querySelector(".error"));
  const e = await viewError();
  if (e) throw new Error(`the devices view failed: ${e}`);
});

await step("devices-vs-api", async () => {
  const r = await apiGet("api/v1/query", { query: 'last_over_time(temperature{source="mqtt"}[24h])' });
  const want = new Map(r.data.result.map((s) => [s.metric.device, Number(s.value[1])]));
  for (const d of ["pump1", "pump2"]) if (!want.has(d)) throw new Error(`the API has no temperature for ${d}`);
  const seen = [];
  await until("the devices table does not show pump1 and pump2 with their latest temperature", async () => {
    const head = await page.$$eval("main th", (els) => els.map((e) => e.textContent.trim()));
    const [di, ti] = [head.indexOf("device"), head.indexOf("temperature")];
    if (di < 0 || ti < 0) return `columns ${JSON.stringify(head)}`;
    const rows = await page.$$eval("main tbody tr", (trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent.trim())));
    seen.length = 0;
    for (const d of ["pump1", "pump2"]) {
      const row = rows.find((x) => x[di] === d);
      if (!row) return `no row for ${d}`;
      if (Number(row[ti].replace(/,/g, "")) !== want.get(d)) return `${d}: temperature ${row[ti]} in the UI, ${want.get(d)} from the API`;
      seen.push(`${d} ${row[ti]}`);
    }
    return null;
  });
  console.log(`     ${seen.join(", ")} (as last_over_time(temperature{source="mqtt"}[24h]))`);
});

// The devices published (JSON on a topic template and Sparkplug B by group/edge node/device), each with
// its latest values and its last seen: the exact time of its newest sample, as published.
const wantDevices = JSON.parse(process.env.LUMEN_E2E_DEVICES ?? "[]");
await step("devices-last-seen", async () => {
  if (!wantDevices.length) throw new Error("LUMEN_E2E_DEVICES (the devices published and their sample times) is not set");
  const said = [];
  await until("the devices table differs from what was published", async () => {
    // Read in the page: the last seen cell's title is the time in the browser's zone, to the millisecond.
    const table = await page.evaluate(() => {
      const head = [...document.querySelectorAll("main th")].map((e) => e.textContent.trim());
      const rows = [...document.querySelectorAll("main tbody tr")].map((tr) =>
        [...tr.querySelectorAll("td")].map((td) => {
          const title = td.querySelector("span[title]")?.getAttribute("title");
          return { text: td.textContent.trim(), ms: title ? Date.parse(title.replace(" ", "T")) : null };
        }),
      );
      return { head, rows };
    });
    const seenCol = table.head.indexOf("last seen");
    if (seenCol < 0) return `no "last seen" column: ${JSON.stringify(table.head)}`;
    const labelCols = table.head.slice(0, seenCol);
    said.length = 0;
    for (const d of wantDevices) {
      const name = Object.entries(d.labels).map(([k, v]) => `${k}=${v}`).join(" ");
      const row = table.rows.find((r) => labelCols.every((c, i) => r[i].text === (d.labels[c] ?? "")));
      if (!row) return `no row for ${name} (label columns ${JSON.stringify(labelCols)})`;
      for (const [m, v] of Object.entries(d.values)) {
        const i = table.head.indexOf(m);
        if (i < 0) return `no column ${m} for ${name}`;
        if (Number(row[i].text.replace(/,/g, "")) !== v) return `${name}: ${m} is ${row[i].text} in the UI, ${v} was published`;
      }
      const cell = row[seenCol];
      if (cell.ms !== d.seen) return `${name}: last seen ${cell.ms} (${cell.text}) in the UI, its newest sample is at ${d.seen}`;
      const m = /^((\d+)d)?((\d+)h)?((\d+)m(?!s))?((\d+)s)?( ago)$/.exec(cell.text);
      if (!m) return `${name}: last seen reads ${JSON.stringify(cell.text)}, not an exact age`;
      const age = ((+(m[2] ?? 0) * 24 + +(m[4] ?? 0)) * 60 + +(m[6] ?? 0)) * 60_000 + +(m[8] ?? 0) * 1000;
      const real = Date.now() - d.seen;
      if (age > real || age < real - 30_000) return `${name}: last seen says ${cell.text}, the sample is ${Math.round(real / 1000)}s old`;
      said.push(`${name} ${cell.text}`);
    }
    return null;
  });
  console.log(`     ${said.join("; ")}: values as published, last seen = the published sample times to the millisecond`);
});

await step("status", async () => {
  await goView("Status");
  await page.waitForFunction(() => document.querySelector(".status .card h3") || document.querySelector(".error"));
  const e = await viewError();
  if (e) throw new Error(`the status view failed: ${e}`);
});

// ---- rules: what the Rules view shows against api/v1/rules (PromQL) and prometheus/api/v1/rules (LogQL) ----
const RULE_APIS = [
  ["PromQL", "api/v1/rules"],
  ["LogQL", "prometheus/api/v1/rules"],
];
/** Every rule of both rules APIs, with the state as the UI names it ("recording" for recording rules). */
async function apiRules() {
  const out = [];
  for (const [lang, path] of RULE_APIS) {
    const r = await apiGet(path);
    for (const g of r.data.groups)
      for (const rule of g.rules)
        out.push({
          lang,
          group: g.name,
          name: rule.name,
          state: rule.type === "recording" ? "recording" : rule.state,
          error: rule.health === "err",
          query: rule.query,
          alerts: rule.alerts ?? [],
        });
  }
  return out;
}
/** The rules the page shows, read from what it renders. */
const shownRules = () =>
  page.$$eval(".rules .group", (gs) =>
    gs.flatMap((g) => {
      const lang = g.querySelector(".group-head .lang").textContent.trim();
      const group = g.querySelector(".group-head .group-name").textContent.trim();
      return [...g.querySelectorAll(".rule")].map((r) => ({
        lang,
        group,
        name: r.querySelector(".rule-name").textContent.trim(),
        state: r.querySelector(".rule-head .state").textContent.trim(),
        error: !!r.querySelector(".rule-head .err"),
        href: r.querySelector("a.query")?.getAttribute("href") ?? "",
        query: r.querySelector("a.query")?.textContent ?? "",
        alertsHead: r.querySelector(".alerts-head")?.textContent.trim() ?? "",
        alerts: [...r.querySelectorAll(".alert")].map((a) => ({
          state: a.querySelector(".state").textContent.trim(),
          chips: [...a.querySelectorAll(".chip")].map((c) => c.textContent.trim()).sort(),
          value: a.querySelector(".value")?.textContent.trim() ?? "",
          text: a.innerText,
        })),
      }));
    }),
  );
const ruleKey = (r) => `${r.lang} ${r.group} ${r.name}`;
/** An alert as "state {labels without alertname} value", from the API or from the page. */
const apiAlertKey = (a) =>
  `${a.state} ${Object.keys(a.labels).filter((k) => k !== "alertname").sort().map((k) => `${k}=${a.labels[k]}`).join(",")} ${Number(a.value)}`;
// The page shows values as plain numbers ("1", "12,345", "0.5"), not as the API's "1e+00".
const uiAlertKey = (a) => `${a.state} ${a.chips.join(",")} ${/^(-?[\d,]+(\.\d+)?|[+-]Inf|NaN)$/.test(a.value) ? Number(a.value.replace(/,/g, "")) : `unreadable ${a.value}`}`;
const RULES_WANTED = { "ui:answer": "recording", UiAlwaysFiring: "firing", UiPending: "pending", UiNever: "inactive", UiLoghubErrors: "firing" };

await step("rules", async () => {
  await goView("Rules");
  await page.waitForFunction(() => document.querySelector(".rules .rule") || document.querySelector("main .empty") || document.querySelector(".error"));
  const e = await viewError();
  if (e) throw new Error(`the rules view failed: ${e}`);
  if (!(await page.locator(".rules .rule").count())) throw new Error(`the rules view shows no rule: ${await page.locator("main").innerText()}`);
});

await step("rules-vs-api", async () => {
  let said = "";
  await until("the Rules view differs from the rules APIs", async () => {
    const want = await apiRules();
    // The server's own answer first: the rules ui_browser.rs configures, settled in their states.
    for (const [n, st] of Object.entries(RULES_WANTED)) {
      const w = want.find((r) => r.name === n);
      if (!w) return `the API has no rule ${n}: ${want.map(ruleKey).join(", ")}`;
      if (w.state !== st) return `the API gives ${n} the state ${w.state}, not ${st} (yet)`;
    }
    const logAlert = want.find((r) => r.name === "UiLoghubErrors");
    if (logAlert.lang !== "LogQL" || !logAlert.alerts.length) return `the API lists UiLoghubErrors as ${logAlert.lang} with ${logAlert.alerts.length} alerts`;
    if (await page.locator(".rules .error").count()) return `the view shows an error: ${await viewError()}`;
    const got = await shownRules();
    // Every rule of both lists, with its state and error badge, and no other.
    const list = (rs) => rs.map((r) => `${ruleKey(r)}: ${r.state}${r.error ? " (error)" : ""}`).sort();
    const [g, w] = [list(got), list(want)];
    if (JSON.stringify(g) !== JSON.stringify(w)) return `the UI shows ${JSON.stringify(g)}, the APIs have ${JSON.stringify(w)}`;
    // Firing first, then pending, then the rest, in every group.
    const rank = (s) => (s === "firing" ? 0 : s === "pending" ? 1 : 2);
    for (let i = 1; i < got.length; i++)
      if (got[i].group === got[i - 1].group && got[i].lang === got[i - 1].lang && rank(got[i].state) < rank(got[i - 1].state))
        return `${got[i].name} (${got[i].state}) is shown after ${got[i - 1].name} (${got[i - 1].state})`;
    for (const r of want) {
      const s = got.find((x) => ruleKey(x) === ruleKey(r));
      // The active alerts: their count, and each one's state, labels and value.
      const n = r.alerts.length;
      const head = n ? `${n} active alert${n === 1 ? "" : "s"}` : "";
      if (n ? !s.alertsHead.startsWith(head) : s.alertsHead) return `${ruleKey(r)}: the UI says ${JSON.stringify(s.alertsHead)}, the API has ${n} active alerts`;
      const [ga, wa] = [s.alerts.map(uiAlertKey).sort(), r.alerts.map(apiAlertKey).sort()];
      if (n <= 50 ? JSON.stringify(ga) !== JSON.stringify(wa) : ga.length !== 50)
        return `${ruleKey(r)}: the UI shows the alerts ${JSON.stringify(ga)}, the API has ${JSON.stringify(wa)}`;
      // The query, linking to the view of its language.
      const view = r.lang === "LogQL" ? "logs" : "metrics";
      const hq = new URLSearchParams(s.href.split("?")[1] ?? "").get("query");
      if (s.query !== r.query || !s.href.startsWith(`#/${view}?`) || hq !== r.query)
        return `${ruleKey(r)}: the query ${JSON.stringify(s.query)} links to ${s.href}; the API's query is ${JSON.stringify(r.query)} (a ${view} link)`;
    }
    const firing = got.find((r) => r.name === "UiAlwaysFiring");
    if (!firing.alerts.length || !firing.alerts.every((a) => a.text.includes("always firing")))
      return `UiAlwaysFiring's alert does not show its summary "always firing": ${JSON.stringify(firing.alerts.map((a) => a.text))}`;
    const logs = got.find((r) => r.name === "UiLoghubErrors");
    for (const a of logs.alerts) {
      const app = a.chips.find((c) => c.startsWith("app="))?.slice(4);
      if (!app || !a.text.includes(`${app} logged errors`)) return `an alert of UiLoghubErrors does not show "<app> logged errors": ${JSON.stringify(a)}`;
    }
    // The summary line counts what the APIs list.
    const summary = await page.locator(".rules .summary").innerText();
    const counts = ["firing", "pending", "inactive", "recording"].map((st) => `${want.filter((r) => r.state === st).length} ${st}`);
    counts.push(`${want.filter((r) => r.error).length} with errors`);
    const missing = counts.filter((c) => !new RegExp(`(^|\\D)${c}\\b`).test(summary));
    if (missing.length) return `the summary ${JSON.stringify(summary)} does not say ${missing.join(", ")}`;
    said = `${got.length} rules as the APIs list them (${g.join("; ")}); UiLoghubErrors shows ${logs.alerts.length} alerts = the API's; summary: ${summary.replace(/\s+/g, " ")}`;
    return null;
  }, 30_000);
  console.log(`     ${said}`);
});

await step("rules-filter", async () => {
  const filter = page.locator(".rules input.filter");
  await filter.fill("UiPending");
  await until("the text filter UiPending", async () => {
    const names = (await shownRules()).map((r) => r.name);
    if (JSON.stringify(names) !== JSON.stringify(["UiPending"])) return `the UI shows ${JSON.stringify(names)}`;
    return new URL(page.url()).hash.includes("q=UiPending") ? null : `the filter is not in the URL: ${page.url()}`;
  });
  await filter.fill("");
  await page.selectOption(".rules select", "firing");
  await until("the state filter firing", async () => {
    const want = (await apiRules()).filter((r) => r.state === "firing").map(ruleKey).sort();
    const got = await shownRules();
    const names = got.map(ruleKey).sort();
    if (JSON.stringify(names) !== JSON.stringify(want)) return `the UI shows ${JSON.stringify(names)}, the APIs' firing rules are ${JSON.stringify(want)}`;
    return new URL(page.url()).hash.includes("state=firing") ? null : `the state is not in the URL: ${page.url()}`;
  });
  await page.screenshot({ path: join(out, "rules-firing.png"), fullPage: true }).catch(() => {});
  await page.selectOption(".rules select", "all");
  // The query of a PromQL rule opens in Metrics.
  const query = (await apiRules()).find((r) => r.name === "UiAlwaysFiring").query;
  await page.click('.rules .rule:has(.rule-name:text-is("UiAlwaysFiring")) a.query');
  await page.waitForSelector('header nav a.active:has-text("Metrics")', { state: "attached" });
  await until("the Metrics view did not take the rule's query", async () => {
    const v = await page.locator("textarea[data-querybox]").inputValue();
    return v === query ? null : `the query box holds ${JSON.stringify(v)}, not ${JSON.stringify(query)}`;
  });
  console.log(`     the text and state filters narrow the list and stay in the URL; the query link opened ${query} in Metrics`);
});

await step("phone", async () => {
  await page.setViewportSize({ width: 390, height: 800 });
  await page.click("header .menu");
  await goView("Logs");
  await page.waitForSelector(".logline");
});

await browser.close();
if (pageErrors.length) failures.push(`errors in the page: ${pageErrors.join("; ")}`);
if (foreign.length) failures.push(`requests to hosts other than ${origin}: ${[...new Set(foreign)].join(", ")}`);
console.log(`${requests.length} requests, all to ${origin}${foreign.length ? " (NOT: see above)" : ""}; screenshots in ${out}`);
if (failures.length) {
  console.error("\nE2E FAILED:\n- " + failures.join("\n- "));
  process.exit(1);
}
console.log("E2E passed");
