import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import type { ViewProps } from "../main";
import { api, type Series } from "../api";
import { chooseStep, fmtTime, parseDuration, resolveRange, type TimeRange } from "../time";
import { Chart, ErrorBox, PALETTE, QueryBox, Table, TimePicker, fmtNum, labelsText, useInterval } from "../components";
import { seriesToChart } from "./Logs";
import { promqlSuggest } from "../suggest";

const MAX_SERIES = 100;

export function Metrics({ params, setParams }: ViewProps) {
  const range: TimeRange = { from: params.from || "now-1h", to: params.to || "now" };
  const mode = params.mode === "table" ? "table" : "graph";
  const [text, setText] = useState(params.query ?? "");
  const [result, setResult] = useState<{ type: string; data: any; span?: [number, number] } | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [hidden, setHidden] = useState<Set<number>>(new Set());
  const [filter, setFilter] = useState("");
  const [explorer, setExplorer] = useState(params.explore === "1");
  const abort = useRef<AbortController | null>(null);

  useEffect(() => setText(params.query ?? ""), [params.query]);

  const run = async () => {
    const query = (params.query ?? "").trim();
    abort.current?.abort();
    if (!query) return setResult(null);
    const ac = new AbortController();
    abort.current = ac;
    setBusy(true);
    setError(null);
    try {
      const { start, end } = resolveRange(range);
      if (mode === "graph") {
        const step = parseDuration(params.step || "") ? parseDuration(params.step!)! / 1000 : chooseStep(start, end, 250);
        const r = await api("api/v1/query_range", { params: { query, start: start / 1000, end: end / 1000, step }, signal: ac.signal });
        setResult({ type: r.data.resultType, data: r.data.result, span: [start / 1000, end / 1000] });
      } else {
        const r = await api("api/v1/query", { params: { query, time: end / 1000 }, signal: ac.signal });
        setResult({ type: r.data.resultType, data: r.data.result });
      }
      setHidden(new Set());
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
    run();
  }, [params.query, range.from, range.to, mode, params.step]);
  useEffect(() => () => abort.current?.abort(), []);
  useInterval(() => !busy && run(), parseDuration(params.refresh || "") || null);

  const [allSeries, setAllSeries] = useState(false);
  const full = result && result.type === "matrix" ? (result.data as Series[]) : null;
  // A guard: hundreds of lines make an unreadable, slow chart.
  const matrix = useMemo(() => (full && !allSeries ? full.slice(0, MAX_SERIES) : full), [full, allSeries]);
  const chart = useMemo(() => (matrix ? seriesToChart(matrix, hidden) : null), [matrix, hidden]);

  return (
    <section class="view">
      <QueryBox
        value={text}
        onInput={setText}
        onRun={(v) => (v === params.query ? run() : setParams({ ...params, query: v }, true))}
        historyKey="lumen.history.promql"
        placeholder="rate(http_requests_total[5m])   (Enter runs, Shift+Enter new line)"
        suggest={promqlSuggest}
      />
      <div class="toolbar">
        <div class="tabs">
          <button class={mode === "graph" ? "active" : ""} onClick={() => setParams({ ...params, mode: "" })}>
            Graph
          </button>
          <button class={mode === "table" ? "active" : ""} onClick={() => setParams({ ...params, mode: "table" })}>
            Table
          </button>
        </div>
        <TimePicker
          range={range}
          onChange={(r) => setParams({ ...params, ...r }, true)}
          refresh={params.refresh}
          onRefresh={(r) => setParams({ ...params, refresh: r })}
        />
        <input class="small" placeholder="step (auto)" value={params.step ?? ""} onChange={(e) => setParams({ ...params, step: e.currentTarget.value })} />
        {busy && <button onClick={() => abort.current?.abort()}>Cancel</button>}
        <span class="spacer" />
        <button class={explorer ? "active" : ""} onClick={() => (setExplorer(!explorer), setParams({ ...params, explore: explorer ? "" : "1" }))}>
          Metrics explorer
        </button>
      </div>
      <ErrorBox error={error} />
      {busy && <div class="muted">running…</div>}
      <div class={explorer ? "split" : ""}>
        <div class="main-col">
          {full && full.length > MAX_SERIES && !allSeries && (
            <div class="guard">
              Showing {MAX_SERIES} of {full.length} series. <button onClick={() => setAllSeries(true)}>Show all</button>
            </div>
          )}
          {chart && matrix && (
            <>
              <Chart
                data={chart.data}
                series={chart.series}
                height={300}
                xRange={result?.span}
                onSelect={(a, b) => setParams({ ...params, from: new Date(a).toISOString(), to: new Date(b).toISOString() }, true)}
              />
              <div class="legend">
                {matrix.length > 8 && <input placeholder="filter series" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} />}
                {matrix.map((s, i) => {
                  const name = labelsText(s.metric);
                  if (filter && !name.toLowerCase().includes(filter.toLowerCase())) return null;
                  return (
                    <div
                      class={"item" + (hidden.has(i) ? " off" : "")}
                      title="click: show only this series; Ctrl/⌘+click: toggle it"
                      onClick={(e) => {
                        const h = new Set(hidden);
                        if (e.ctrlKey || e.metaKey) h.has(i) ? h.delete(i) : h.add(i);
                        else {
                          const only = hidden.size === matrix.length - 1 && !hidden.has(i);
                          h.clear();
                          if (!only) matrix.forEach((_, j) => j !== i && h.add(j));
                        }
                        setHidden(h);
                      }}
                    >
                      <i style={{ background: PALETTE[i % PALETTE.length] }} />
                      {name}
                    </div>
                  );
                })}
              </div>
              {matrix.length === 0 && <div class="muted empty">No data in this range.</div>}
            </>
          )}
          {result && result.type !== "matrix" && <InstantTable type={result.type} data={result.data} />}
        </div>
        {explorer && <Explorer onPick={(n) => setParams({ ...params, query: n }, true)} />}
      </div>
    </section>
  );
}

function InstantTable({ type, data }: { type: string; data: any }) {
  if (type === "scalar" || type === "string") return <Table columns={["time", "value"]} rows={[[fmtTime(data[0] * 1000), String(data[1])]]} />;
  const vec = data as Series[];
  if (!vec.length) return <div class="muted empty">Empty result.</div>;
  return (
    <Table
      columns={["series", "value", "time"]}
      rows={vec.map((s) => [<code>{labelsText(s.metric)}</code>, fmtNum(Number(s.value![1])), fmtTime(s.value![0] * 1000)])}
    />
  );
}

function Explorer({ onPick }: { onPick: (name: string) => void }) {
  const [names, setNames] = useState<string[] | null>(null);
  const [meta, setMeta] = useState<Record<string, { type: string; help: string }[]>>({});
  const [q, setQ] = useState("");
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    api("api/v1/label/__name__/values")
      .then((r) => setNames(r.data ?? []))
      .catch((e) => setError(String(e.message ?? e)));
    api("api/v1/metadata")
      .then((r) => setMeta(r.data ?? {}))
      .catch(() => {});
  }, []);
  const list = (names ?? []).filter((n) => n.toLowerCase().includes(q.toLowerCase()));
  return (
    <aside class="explorer">
      <input placeholder="search metrics" value={q} onInput={(e) => setQ(e.currentTarget.value)} />
      <ErrorBox error={error} />
      {names && <div class="muted">{list.length} of {names.length} metrics</div>}
      <ul>
        {list.slice(0, 500).map((n) => {
          const m = meta[n]?.[0];
          return (
            <li onClick={() => onPick(n)} title="graph it">
              <code>{n}</code> {m?.type && <span class="badge">{m.type}</span>}
              {m?.help && <div class="muted">{m.help}</div>}
            </li>
          );
        })}
      </ul>
    </aside>
  );
}
