// For trying the built UI against a Lumen that does not serve it yet: serves dist/ under /ui/ (as the
// server will) and forwards everything else, WebSocket upgrades included, to LUMEN_API (a running lumen).
//   LUMEN_API=http://127.0.0.1:19700 PORT=19701 node scripts/serve-dist.mjs
import http from "node:http";
import net from "node:net";
import { readFileSync, existsSync, statSync } from "node:fs";
import { join, extname } from "node:path";

const api = new URL(process.env.LUMEN_API ?? "http://127.0.0.1:9700");
const port = Number(process.env.PORT ?? 19701);
const dist = new URL("../dist/", import.meta.url).pathname;
const types = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml" };

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/" || url.pathname === "/ui") {
    res.writeHead(308, { Location: url.pathname === "/" ? "ui/" : "ui/" });
    return res.end();
  }
  if (process.env.STATUS_MOCK && url.pathname === "/api/v1/status/lumen") {
    // A stand-in for a server that does not answer it yet (shape from the issue), counters growing.
    const up = process.uptime();
    res.writeHead(200, { "Content-Type": "application/json" });
    return res.end(JSON.stringify({
      version: "0.1.0", revision: "mock", uptime_seconds: up,
      storage: { logs: { parts: 3, rows: 1000, disk_bytes: 12345, head_rows: 10 }, metrics: { series: 5, parts: 1, samples: 100, disk_bytes: 999, head_samples: 0 }, retention_seconds: 2592000, disk: { free_bytes: 1e10, reserve_bytes: 2e9, budget_bytes: 0, problem: null } },
      ingest: { lines: { loki: Math.round(up * 10), jsonline: 0 }, samples: { remote_write: Math.round(up * 5) } },
      config: { server: { http_addr: "127.0.0.1:9700" }, auth: { tokens: "***" } },
    }));
  }
  if (url.pathname.startsWith("/ui/")) {
    const rel = url.pathname.slice(4) || "index.html";
    const file = join(dist, rel);
    if (!file.startsWith(dist) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404);
      return res.end("not found");
    }
    const gz = (req.headers["accept-encoding"] ?? "").includes("gzip") && existsSync(file + ".gz");
    res.writeHead(200, { "Content-Type": types[extname(file)] ?? "application/octet-stream", ...(gz ? { "Content-Encoding": "gzip" } : {}) });
    return res.end(readFileSync(gz ? file + ".gz" : file));
  }
  const p = http.request({ host: api.hostname, port: api.port, method: req.method, path: req.url, headers: req.headers }, (r) => {
    const h = { ...r.headers };
    // What the server should do for the UI: no Basic challenge (it would open the browser's own dialog).
    if (req.headers["x-lumen-ui"] && r.statusCode === 401) delete h["www-authenticate"];
    res.writeHead(r.statusCode, h);
    r.pipe(res);
  });
  p.on("error", (e) => {
    res.writeHead(502);
    res.end(String(e));
  });
  req.pipe(p);
});
server.on("upgrade", (req, sock, head) => {
  const up = net.connect(Number(api.port), api.hostname, () => {
    let h = `${req.method} ${req.url} HTTP/1.1\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2) h += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    up.write(h + "\r\n");
    up.write(head);
    up.pipe(sock);
    sock.pipe(up);
  });
  up.on("error", () => sock.destroy());
  sock.on("error", () => up.destroy());
});
server.listen(port, "127.0.0.1", () => console.log(`UI on http://127.0.0.1:${port}/ui/ → API ${api.href}`));
