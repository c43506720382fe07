import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import type { ViewProps } from "../main";
import { CATEGORIZE, api, getAuth, getTenant, wsProtocols, wsUrl, type Series, type Stream } from "../api";
import { addMatcher, histogramQuery, isLogQuery, quote, type Op } from "../logql";
import { chooseStep, fmtTime, parseDuration, resolveRange, type TimeRange } from "../time";
import { Chart, ErrorBox, PALETTE, QueryBox, TimePicker, download, labelsText, useInterval } from "../components";
import { logqlSuggest } from "../suggest";
import { contextRequests, mergeContext, type ContextLine } from "../context";

export interface Entry {
  ns: string; // nanoseconds as a decimal string
  ms: number;
  line: string;
  /** The stream's labels. */
  labels: Record<string, string>;
  /** Structured metadata and parsed fields (categorized answers only). */
  fields: Record<string, string>;
  key: string; // stream key
}

const LEVELS: Record<string, string> = {
  critical: "#b91c1c",
  fatal: "#b91c1c",
  error: "#ef4444",
  warn: "#f59e0b",
  warning: "#f59e0b",
  info: "#10b981",
  debug: "#3b82f6",
  trace: "#8b5cf6",
  unknown: "#9ca3af",
};
const RENDER_LIMIT = 500;
const TAIL_CAP = 2000;

export function levelOf(e: Entry): string {
  const f = { ...e.fields, ...e.labels };
  const l = (f.detected_level || f.level || f.severity || "").toLowerCase();
  if (l) return l;
  const m = /\b(level|lvl|severity)[=:]\s*"?(\w+)/i.exec(e.line) ?? /\b(FATAL|CRITICAL|ERROR|WARN|WARNING|INFO|DEBUG|TRACE)\b/.exec(e.line);
  const v = (m ? m[m.length - 1] : "").toLowerCase();
  return v === "err" ? "error" : v === "wrn" ? "warn" : v;
}

export function toEntries(streams: Stream[]): Entry[] {
  const out: Entry[] = [];
  for (const s of streams) {
    const key = labelsText(s.stream);
    for (const [ns, line, cat] of s.values) {
      const fields = cat ? { ...cat.structuredMetadata, ...cat.parsed } : {};
      out.push({ ns, ms: Number(ns.slice(0, -6) || "0"), line, labels: s.stream, fields, key });
    }
  }
  out.sort((a, b) => (a.ns.length !== b.ns.length ? b.ns.length - a.ns.length : a.ns < b.ns ? 1 : a.ns > b.ns ? -1 : 0));
  return out;
}

function csvCell(s: string): string {
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

export function Logs({ params, setParams }: ViewProps) {
  const range: TimeRange = { from: params.from || "now-1h", to: params.to || "now" };
  const group = params.group === "streams";
  const limit = Number(params.limit) || 1000;
  const [text, setText] = useState(params.query ?? "");
  const [entries, setEntries] = useState<Entry[] | null>(null);
  const [metric, setMetric] = useState<{ result: Series[]; span: [number, number] } | null>(null);
  const [hist, setHist] = useState<{ data: any; series: any[] } | null>(null);
  const [histPending, setHistPending] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [showAll, setShowAll] = useState(false);
  const [live, setLive] = useState(false);
  const [paused, setPaused] = useState(false);
  const [tailState, setTailState] = useState("");
  const abort = useRef<AbortController | null>(null);

  useEffect(() => setText(params.query ?? ""), [params.query]);

  const run = async () => {
    const query = (params.query ?? "").trim();
    abort.current?.abort();
    setHistPending(false);
    if (!query) {
      setEntries(null);
      setMetric(null);
      setHist(null);
      return;
    }
    const ac = new AbortController();
    abort.current = ac;
    setBusy(true);
    setError(null);
    setShowAll(false);
    try {
      const { start, end } = resolveRange(range);
      const step = chooseStep(start, end, 120);
      const common = { start: String(BigInt(start) * 1_000_000n), end: String(BigInt(end) * 1_000_000n) };
      if (!isLogQuery(query)) {
        const r = await api("loki/api/v1/query_range", { params: { query, ...common, step: chooseStep(start, end, 250) }, signal: ac.signal });
        setEntries(null);
        setHist(null);
        setMetric({ result: r.data.result as Series[], span: [start / 1000, end / 1000] });
        return;
      }
      // The lines and the histogram run at once, and the lines show as soon as they arrive: over a large
      // range the histogram (which counts every line) takes much longer than the newest `limit` lines.
      const logs = api("loki/api/v1/query_range", { params: { query, ...common, limit, direction: "backward" }, signal: ac.signal, headers: CATEGORIZE });
      const histogram = api("loki/api/v1/query_range", { params: { query: histogramQuery(query, step), ...common, step }, signal: ac.signal }).catch(
        (e) => {
          if (e?.name === "AbortError") throw e;
          return api("loki/api/v1/query_range", { params: { query: histogramQuery(query, step, false), ...common, step }, signal: ac.signal });
        },
      );
      let histDone = false;
      setHistPending(true);
      histogram
        .then(
          (h) => abort.current === ac && setHist(histData(h.data.result as Series[], start, end, step)),
          () => abort.current === ac && setHist(null),
        )
        .finally(() => {
          histDone = true;
          if (abort.current === ac) setHistPending(false);
        });
      const l = await logs;
      if (abort.current !== ac) return;
      setMetric(null);
      setEntries(toEntries(l.data.result as Stream[]));
      // A histogram still counting must not show the previous query's bars beside these lines.
      if (!histDone) setHist(null);
    } catch (e: any) {
      if (e?.name !== "AbortError") setError(String(e?.message ?? e));
    } finally {
      if (abort.current === ac) setBusy(false);
    }
  };

  useEffect(() => {
    if (!live) run();
  }, [params.query, range.from, range.to, limit]);
  useEffect(() => () => abort.current?.abort(), []);
  useInterval(() => !busy && !live && run(), live ? null : parseDuration(params.refresh || "") || null);

  // ---- live tail over Loki's WebSocket ----
  const tailBuf = useRef<Entry[]>([]);
  const pausedRef = useRef(paused);
  pausedRef.current = paused;
  useEffect(() => {
    if (!live) return;
    const query = (params.query ?? "").trim();
    if (!isLogQuery(query)) {
      setError("live tail needs a log query ({...} with optional filters)");
      setLive(false);
      return;
    }
    let ws: WebSocket | null = null;
    let stopped = false;
    let retry = 0;
    let timer: any;
    tailBuf.current = [];
    // The tail replaces the query's answer: a histogram still counting is of no use any more.
    abort.current?.abort();
    setHistPending(false);
    setEntries([]);
    setHist(null);
    setMetric(null);
    let lastNs = BigInt(Date.now() - 60_000) * 1_000_000n;
    const add = (streams: Stream[]) => {
      const fresh = toEntries(streams).filter((e) => BigInt(e.ns) >= lastNs);
      if (!fresh.length) return;
      const newest = BigInt(fresh[0].ns);
      if (newest >= lastNs) lastNs = newest + 1n;
      tailBuf.current = [...fresh, ...tailBuf.current].slice(0, TAIL_CAP);
      if (!pausedRef.current) setEntries(tailBuf.current);
    };
    // Polling, only for a tenant chosen without a token: a browser cannot put X-Scope-OrgID on a WebSocket.
    // A token travels as WebSocket subprotocols instead (wsProtocols), so signed in, the tail is a WebSocket.
    const poll = async () => {
      if (stopped) return;
      try {
        const r = await api("loki/api/v1/query_range", {
          params: { query, start: lastNs.toString(), end: String(BigInt(Date.now()) * 1_000_000n), limit: 1000, direction: "forward" },
        });
        add(r.data.result);
        setTailState("live (polling every 2s)");
      } catch (e: any) {
        setTailState("polling failed: " + String(e?.message ?? e));
        if (e?.status >= 400 && e?.status < 500) {
          setError(String(e.message));
          setLive(false);
          return;
        }
      }
      timer = setTimeout(poll, 2000);
    };
    const connect = () => {
      let opened = false;
      ws = new WebSocket(wsUrl("loki/api/v1/tail", { query, limit: 100, start: lastNs.toString() }), wsProtocols(auth));
      setTailState("connecting…");
      ws.onopen = () => {
        opened = true;
        retry = 0;
        setTailState("live");
      };
      ws.onmessage = (ev) => {
        try {
          const msg = JSON.parse(ev.data);
          add(msg.streams ?? []);
          const dropped = (msg.dropped_entries ?? []).length;
          if (dropped) setTailState(`live (the server dropped ${dropped} entries)`);
        } catch {
          /* ignore a bad frame */
        }
      };
      ws.onclose = (ev) => {
        if (stopped) return;
        if (!opened) {
          diagnose();
          return;
        }
        retry++;
        const wait = Math.min(30_000, 1000 * 2 ** Math.min(retry, 5));
        setTailState(`disconnected${ev.reason ? ": " + ev.reason : ""}; reconnecting in ${wait / 1000}s`);
        timer = setTimeout(connect, wait);
      };
    };
    // A failed handshake tells the page nothing; one query_range does: a bad query or a refused token (4xx)
    // is shown and ends the tail, anything else (the server restarting, too many tails) is retried.
    const diagnose = async () => {
      try {
        const now = BigInt(Date.now()) * 1_000_000n;
        await api("loki/api/v1/query_range", { params: { query, start: String(now - 1_000_000_000n), end: String(now), limit: 1 } });
      } catch (e: any) {
        if (e?.status >= 400 && e?.status < 500) {
          setError(String(e.message));
          setLive(false);
          return;
        }
      }
      if (stopped) return;
      retry++;
      const wait = Math.min(30_000, 1000 * 2 ** Math.min(retry, 5));
      setTailState(`cannot connect; retrying in ${wait / 1000}s`);
      timer = setTimeout(connect, wait);
    };
    const auth = getAuth();
    if (!auth && getTenant()) poll();
    else connect();
    return () => {
      stopped = true;
      clearTimeout(timer);
      ws?.close();
      setTailState("");
    };
  }, [live, params.query]);
  useEffect(() => {
    if (live && !paused) setEntries(tailBuf.current);
  }, [paused]);

  const setQuery = (q: string, push = true) => setParams({ ...params, query: q }, push);
  const addLabel = (name: string, op: Op, value: string) => setQuery(addMatcher(params.query ?? "", name, op, value));
  // A field (structured metadata or parsed) is not in the selector: it is filtered after the pipeline.
  const addFilter = (name: string, op: "=" | "!=", value: string) => setQuery(`${(params.query ?? "").trimEnd()} | ${name}${op}${quote(value)}`);

  const shown = entries ? (showAll ? entries : entries.slice(0, RENDER_LIMIT)) : [];
  const groups = useMemo(() => {
    if (!group) return null;
    const m = new Map<string, Entry[]>();
    for (const e of shown) (m.get(e.key) ?? m.set(e.key, []).get(e.key)!).push(e);
    return [...m];
  }, [shown, group]);

  const exportJson = () =>
    download("logs.jsonl", (entries ?? []).map((e) => JSON.stringify({ time: e.ns, labels: e.labels, ...(Object.keys(e.fields).length ? { fields: e.fields } : {}), line: e.line })).join("\n") + "\n", "application/x-ndjson");
  const exportCsv = () =>
    download(
      "logs.csv",
      "time,labels,line\n" + (entries ?? []).map((e) => [new Date(e.ms).toISOString(), labelsText(e.labels), e.line].map(csvCell).join(",")).join("\n") + "\n",
      "text/csv",
    );

  return (
    <section class="view">
      <QueryBox
        value={text}
        onInput={setText}
        onRun={(v) => (v === params.query ? run() : setQuery(v))}
        historyKey="lumen.history.logql"
        placeholder='{app="web"} |= "error"   (Enter runs, Shift+Enter new line, Ctrl+↑/↓ history, / focuses)'
        suggest={(t, c) =>
          logqlSuggest(t, c, () => {
            const { start, end } = resolveRange(range);
            return { start: String(BigInt(start) * 1_000_000n), end: String(BigInt(end) * 1_000_000n) };
          })
        }
      />
      <div class="toolbar">
        <TimePicker
          range={range}
          onChange={(r) => setParams({ ...params, ...r }, true)}
          refresh={params.refresh}
          onRefresh={(r) => setParams({ ...params, refresh: r })}
        />
        <select value={String(limit)} onChange={(e) => setParams({ ...params, limit: e.currentTarget.value })} title="Line limit">
          {[100, 1000, 5000, 10000].map((n) => (
            <option value={String(n)}>{n} lines</option>
          ))}
        </select>
        <label class="check">
          <input type="checkbox" checked={group} onChange={(e) => setParams({ ...params, group: e.currentTarget.checked ? "streams" : "" })} /> by stream
        </label>
        <button class={live ? "active" : ""} onClick={() => (setLive(!live), setPaused(false))} title="Live tail">
          {live ? "■ Stop tail" : "▶ Live"}
        </button>
        {live && <button onClick={() => setPaused(!paused)}>{paused ? "Resume" : "Pause"}</button>}
        {(busy || histPending) && (
          <button onClick={() => abort.current?.abort()} title="Cancel the running query">
            Cancel
          </button>
        )}
        <span class="spacer" />
        {entries && entries.length > 0 && (
          <>
            <button onClick={exportJson}>⇩ JSON lines</button>
            <button onClick={exportCsv}>⇩ CSV</button>
          </>
        )}
      </div>
      <ErrorBox error={error} />
      {tailState && <div class="muted">tail: {tailState}{paused ? " (paused)" : ""} · {entries?.length ?? 0} lines kept (max {TAIL_CAP})</div>}
      {busy && <div class="muted">running…</div>}
      {hist && (
        <div class="legend">
          {hist.series.map((s: any, i: number) => (
            <span class="item">
              <i style={{ background: s.color }} />
              {s.label} {(hist.data[i + 1] as (number | null)[]).reduce((a: number, v) => a + (v ?? 0), 0)}
            </span>
          ))}
        </div>
      )}
      {hist && <Chart data={hist.data} series={hist.series} bars stacked height={120} onSelect={(a, b) => setParams({ ...params, from: new Date(a).toISOString(), to: new Date(b).toISOString() }, true)} />}
      {!hist && histPending && entries && (
        // The lines came first: keep the histogram's place so they do not jump when it arrives.
        <div class="chart pending" style={{ height: 120 }}>
          counting lines…
        </div>
      )}
      {metric && <MetricResult result={metric.result} span={metric.span} />}
      {entries && (
        <div class="muted">
          {entries.length} lines{!live && entries.length >= limit ? ` (the limit; narrow the query or raise the limit)` : ""}
        </div>
      )}
      {entries && entries.length > RENDER_LIMIT && !showAll && (
        <div class="guard">
          Showing the newest {RENDER_LIMIT} of {entries.length} lines.{" "}
          <button
            onClick={() => {
              if (entries.length <= 5000 || confirm(`Render all ${entries.length} lines? This may be slow.`)) setShowAll(true);
            }}
          >
            Show all
          </button>
        </div>
      )}
      <div class="loglines">
        {groups
          ? groups.map(([key, es]) => (
              <details open class="stream">
                <summary>
                  <code>{key}</code> <span class="muted">{es.length} lines</span>
                </summary>
                {es.map((e) => (
                  <LogLine e={e} addLabel={addLabel} addFilter={addFilter} />
                ))}
              </details>
            ))
          : shown.map((e) => <LogLine e={e} addLabel={addLabel} addFilter={addFilter} />)}
      </div>
      {entries && entries.length === 0 && !busy && !live && <div class="muted empty">No lines in this range.</div>}
    </section>
  );
}

const CONTEXT_STEP = 10;

function LogLine({
  e,
  addLabel,
  addFilter,
}: {
  e: Entry;
  addLabel: (n: string, op: Op, v: string) => void;
  addFilter: (n: string, op: "=" | "!=", v: string) => void;
}) {
  const [open, setOpen] = useState(false);
  const [context, setContext] = useState(0); // lines asked for each way; 0 = context not shown
  const lvl = levelOf(e);
  const pair = (k: string, v: string, add: (n: string, op: any, v: string) => void, where: string, cls: string) => (
    <span class={cls}>
      <b>{k}</b>=
      <span class="value" title={`add ${k}="${v}" to the ${where}`} onClick={() => add(k, "=", v)}>
        {v}
      </span>
      <button title={`add ${k}="${v}" to the ${where}`} onClick={() => add(k, "=", v)}>
        +
      </button>
      <button title={`add ${k}!="${v}" to the ${where}`} onClick={() => add(k, "!=", v)}>
        −
      </button>
    </span>
  );
  return (
    <div class={"logline" + (open ? " open" : "")} style={{ borderLeftColor: LEVELS[lvl] ?? "transparent" }}>
      <div class="head" onClick={() => setOpen(!open)}>
        <span class="ts">{fmtTime(e.ms)}</span>
        <span class="msg">{e.line}</span>
      </div>
      {open && (
        <div class="labels">
          {Object.keys(e.labels)
            .sort()
            .map((k) => pair(k, e.labels[k], addLabel, "selector", "label"))}
          {Object.keys(e.fields)
            .filter((k) => !(k in e.labels))
            .sort()
            .map((k) => pair(k, e.fields[k], addFilter, "query as a filter", "label field"))}
          <span class="muted">{e.ns} ns</span>
          <button class="context-toggle" onClick={() => setContext(context ? 0 : CONTEXT_STEP)} title="The lines before and after this one in its stream">
            {context ? "Hide context" : "Show context"}
          </button>
        </div>
      )}
      {open && context > 0 && <Context e={e} n={context} more={() => setContext(context + CONTEXT_STEP)} />}
    </div>
  );
}

/** The `n` lines before and after `e` in its stream, oldest first, `e` marked. */
function Context({ e, n, more }: { e: Entry; n: number; more: () => void }) {
  const [ctx, setCtx] = useState<{ before: ContextLine[]; after: ContextLine[] } | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    const ac = new AbortController();
    const req = contextRequests(e.labels, e.ns, n);
    const lines = (r: any) => toEntries(r.data.result as Stream[]).map((x) => ({ ns: x.ns, line: x.line }));
    Promise.all([
      api("loki/api/v1/query_range", { params: req.before, signal: ac.signal }),
      api("loki/api/v1/query_range", { params: req.after, signal: ac.signal }),
    ])
      .then(([b, a]) => setCtx(mergeContext(e, lines(b), lines(a), n)))
      .catch((err) => err?.name !== "AbortError" && setError(String(err?.message ?? err)));
    return () => ac.abort();
  }, [e.ns, e.line, e.key, n]);
  if (error) return <ErrorBox error={error} />;
  if (!ctx) return <div class="context muted">loading the lines around this one…</div>;
  const row = (l: ContextLine, cls: string) => (
    <div class={"ctxline " + cls}>
      <span class="ts">{fmtTime(Number(l.ns.slice(0, -6) || "0"))}</span>
      <span class="text">{l.line}</span>
    </div>
  );
  return (
    <div class="context">
      <div class="muted">
        {ctx.before.length} lines before and {ctx.after.length} after, in this stream, oldest first{" "}
        {(ctx.before.length >= n || ctx.after.length >= n) && <button onClick={more}>{CONTEXT_STEP} more each way</button>}
      </div>
      {ctx.before.map((l) => row(l, "before"))}
      {row(e, "self")}
      {ctx.after.map((l) => row(l, "after"))}
    </div>
  );
}

function histData(result: Series[], start: number, end: number, step: number) {
  const t0 = Math.floor(start / 1000 / step) * step;
  const xs: number[] = [];
  for (let t = t0; t <= end / 1000; t += step) xs.push(t);
  const idx = new Map(xs.map((t, i) => [t, i]));
  const order = ["critical", "fatal", "error", "warn", "warning", "info", "debug", "trace", "unknown"];
  const sorted = [...result].sort(
    (a, b) => (order.indexOf(a.metric.detected_level ?? "") + 1 || 99) - (order.indexOf(b.metric.detected_level ?? "") + 1 || 99),
  );
  const ys = sorted.map((s) => {
    const y: (number | null)[] = xs.map(() => null);
    for (const [t, v] of s.values ?? []) {
      const i = idx.get(Math.round(t)) ?? idx.get(Math.floor(t / step) * step);
      if (i !== undefined) y[i] = Number(v);
    }
    return y;
  });
  return {
    data: [xs, ...ys],
    series: sorted.map((s, i) => {
      const l = s.metric.detected_level ?? "";
      return { label: l || "lines", color: LEVELS[l] ?? PALETTE[i % PALETTE.length] };
    }),
  };
}

export function MetricResult({ result, span }: { result: Series[]; span?: [number, number] }) {
  const { data, series } = useMemo(() => seriesToChart(result), [result]);
  return <Chart data={data} series={series} xRange={span} />;
}

export function seriesToChart(result: Series[], hidden?: Set<number>) {
  const ts = new Set<number>();
  for (const s of result) for (const [t] of s.values ?? []) ts.add(t);
  const xs = [...ts].sort((a, b) => a - b);
  const idx = new Map(xs.map((t, i) => [t, i]));
  const ys = result.map((s) => {
    const y: (number | null)[] = xs.map(() => null);
    for (const [t, v] of s.values ?? []) {
      const n = Number(v);
      y[idx.get(t)!] = Number.isFinite(n) ? n : null;
    }
    return y;
  });
  return {
    data: [xs, ...ys] as any,
    series: result.map((s, i) => ({ label: labelsText(s.metric), color: PALETTE[i % PALETTE.length], show: !hidden?.has(i) })),
  };
}
