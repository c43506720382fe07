import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import type { ViewProps } from "../main";
import { api, getAuth, getTenant, wsUrl, type Series, type Stream } from "../api";
import { addMatcher, histogramQuery, isLogQuery, type Op } from "../logql";
import { chooseStep, fmtTime, parseDuration, resolveRange, type TimeRange } from "../time";
import { Chart, ErrorBox, PALETTE, QueryBox, TimePicker, download, labelsText, useInterval } from "../components";
import { labelSuggest } from "../suggest";

interface Entry {
  ns: string; // nanoseconds as a decimal string
  ms: number;
  line: string;
  labels: Record<string, string>;
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
  const l = (e.labels.detected_level || e.labels.level || e.labels.severity || "").toLowerCase();
  if (l) return l;
  const m = /\b(level|lvl|severity)[=:]\s*"?(\w+)/i.exec(e.line) ?? /\b(FATAL|CRITICAL|ERROR|WARN|WARNING|INFO|DEBUG|TRACE)\b/.exec(e.line);
  const v = (m ? m[m.length - 1] : "").toLowerCase();
  return v === "err" ? "error" : v === "wrn" ? "warn" : v;
}

function toEntries(streams: Stream[]): Entry[] {
  const out: Entry[] = [];
  for (const s of streams) {
    const key = labelsText(s.stream);
    for (const [ns, line] of s.values) out.push({ ns, ms: Number(ns.slice(0, -6) || "0"), line, labels: s.stream, key });
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
      const logs = api("loki/api/v1/query_range", { params: { query, ...common, limit, direction: "backward" }, signal: ac.signal });
      const histogram = api("loki/api/v1/query_range", { params: { query: histogramQuery(query, step), ...common, step }, signal: ac.signal }).catch(
        () => api("loki/api/v1/query_range", { params: { query: histogramQuery(query, step, false), ...common, step }, signal: ac.signal }),
      );
      const [l, h] = await Promise.allSettled([logs, histogram]);
      if (l.status === "rejected") throw l.reason;
      setMetric(null);
      setEntries(toEntries(l.value.data.result as Stream[]));
      if (h.status === "fulfilled") setHist(histData(h.value.data.result as Series[], start, end, step));
      else setHist(null);
    } catch (e: any) {
      if (e?.name !== "AbortError") setError(String(e?.message ?? e));
    } finally {
      if (abort.current === ac) {
        setBusy(false);
        abort.current = null;
      }
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
    // Polling, for when a WebSocket cannot carry what the server needs (browsers cannot add an
    // Authorization or X-Scope-OrgID header to it) or the WebSocket fails to open.
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
      ws = new WebSocket(wsUrl("loki/api/v1/tail", { query, limit: 100, start: lastNs.toString() }));
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
          // The handshake failed (a bad query, or auth): polling shows why, or works where the WebSocket cannot.
          poll();
          return;
        }
        retry++;
        const wait = Math.min(30_000, 1000 * 2 ** Math.min(retry, 5));
        setTailState(`disconnected${ev.reason ? ": " + ev.reason : ""}; reconnecting in ${wait / 1000}s`);
        timer = setTimeout(connect, wait);
      };
    };
    if (getAuth() || getTenant()) poll();
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

  const shown = entries ? (showAll ? entries : entries.slice(0, RENDER_LIMIT)) : [];
  const groups = useMemo(() => {
    if (!group) return null;
    const m = new Map<string, Entry[]>();
    for (const e of shown) (m.get(e.key) ?? m.set(e.key, []).get(e.key)!).push(e);
    return [...m];
  }, [shown, group]);

  const exportJson = () =>
    download("logs.jsonl", (entries ?? []).map((e) => JSON.stringify({ time: e.ns, labels: e.labels, line: e.line })).join("\n") + "\n", "application/x-ndjson");
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
        suggest={(t, c) => labelSuggest("loki/api/v1/", t, c)}
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
        {busy && (
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
                  <LogLine e={e} addLabel={addLabel} />
                ))}
              </details>
            ))
          : shown.map((e) => <LogLine e={e} addLabel={addLabel} />)}
      </div>
      {entries && entries.length === 0 && !busy && !live && <div class="muted empty">No lines in this range.</div>}
    </section>
  );
}

function LogLine({ e, addLabel }: { e: Entry; addLabel: (n: string, op: Op, v: string) => void }) {
  const [open, setOpen] = useState(false);
  const lvl = levelOf(e);
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
            .map((k) => (
              <span class="label">
                <b>{k}</b>=
                <span class="value" title={`add ${k}="${e.labels[k]}" to the selector`} onClick={() => addLabel(k, "=", e.labels[k])}>
                  {e.labels[k]}
                </span>
                <button title={`add ${k}="${e.labels[k]}" to the selector`} onClick={() => addLabel(k, "=", e.labels[k])}>
                  +
                </button>
                <button title={`add ${k}!="${e.labels[k]}" to the selector`} onClick={() => addLabel(k, "!=", e.labels[k])}>
                  −
                </button>
              </span>
            ))}
          <span class="muted">{e.ns} ns</span>
        </div>
      )}
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
