import { useEffect, useRef, useState } from "preact/hooks";
import type { ViewProps } from "../main";
import { api } from "../api";
import { ErrorBox, QueryBox, Table, download } from "../components";

interface SqlAnswer {
  columns: { name: string; type: string }[];
  rows: Record<string, unknown>[];
  truncated: boolean;
}

function cell(v: unknown): string {
  if (v === null || v === undefined) return "NULL";
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

export function Sql({ params, setParams }: ViewProps) {
  const [text, setText] = useState(params.sql ?? "SELECT time, message FROM logs ORDER BY time DESC LIMIT 100");
  const [res, setRes] = useState<SqlAnswer | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [ms, setMs] = useState(0);
  const abort = useRef<AbortController | null>(null);
  useEffect(() => {
    if (params.sql !== undefined) setText(params.sql);
  }, [params.sql]);
  const run = async () => {
    const sql = (params.sql ?? "").trim();
    abort.current?.abort();
    if (!sql) return;
    const ac = new AbortController();
    abort.current = ac;
    setBusy(true);
    setError(null);
    const t0 = performance.now();
    try {
      setRes(await api<SqlAnswer>("api/v1/sql", { method: "POST", body: sql, contentType: "text/plain", signal: ac.signal }));
      setMs(performance.now() - t0);
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
  }, [params.sql]);
  useEffect(() => () => abort.current?.abort(), []);
  const cols = res?.columns.map((c) => c.name) ?? [];
  return (
    <section class="view">
      <QueryBox
        value={text}
        onInput={setText}
        onRun={(v) => (v === params.sql ? run() : setParams({ ...params, sql: v }, true))}
        historyKey="lumen.history.sql"
        ctrlEnterOnly
        rows={5}
        placeholder="SELECT … FROM logs   (Ctrl+Enter runs)"
      />
      <div class="toolbar">
        {busy && <button onClick={() => abort.current?.abort()}>Cancel</button>}
        {res && (
          <span class="muted">
            {res.rows.length} rows{res.truncated ? " (truncated by the server)" : ""}
            {res.rows.length > 5000 ? " (the first 5000 shown; download for all)" : ""} in {ms.toFixed(0)} ms
          </span>
        )}
        <span class="spacer" />
        {res && res.rows.length > 0 && (
          <button onClick={() => download("result.jsonl", res.rows.map((r) => JSON.stringify(r)).join("\n") + "\n", "application/x-ndjson")}>
            ⇩ JSON lines
          </button>
        )}
      </div>
      <ErrorBox error={error} />
      {res && (
        <Table
          columns={res.columns.map((c) => `${c.name} · ${c.type}`)}
          rows={res.rows.slice(0, 5000).map((r) => cols.map((c) => cell(r[c])))}
        />
      )}
    </section>
  );
}
