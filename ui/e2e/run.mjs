// End-to-end check of the web UI against a running Lumen that already holds some data.
//   LUMEN_URL=http://127.0.0.1:9700 LUMEN_E2E_OUT=/tmp/shots node e2e/run.mjs
// Optional: CHROMIUM (default /usr/bin/chromium), LUMEN_E2E_PROMQL (default: the first metric name the
// server knows, else vector(1)).
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
const page = await ctx.newPage();
const record = (url) => {
  requests.push(url);
  if (url.startsWith("data:") || url.startsWith("blob:")) return;
  if (!(url.startsWith(origin + "/") || url === origin || url.startsWith(wsOrigin + "/"))) foreign.push(url);
};
page.on("request", (r) => record(r.url()));
page.on("websocket", (ws) => record(ws.url()));
page.on("pageerror", (e) => pageErrors.push(String(e)));
page.setDefaultTimeout(15_000);

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

await step("devices", async () => {
  await goView("Devices");
  await page.waitForFunction(() => document.querySelector("main table") || document.querySelector("main .empty") || document.querySelector(".error"));
  const e = await viewError();
  if (e) throw new Error(`the devices view failed: ${e}`);
});

await step("status", async () => {
  await goView("Status");
  await page.waitForFunction(() => document.querySelector(".status .card h3") || document.querySelector(".error"));
  const e = await viewError();
  if (e) throw new Error(`the status view failed: ${e}`);
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
