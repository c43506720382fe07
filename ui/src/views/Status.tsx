import { useEffect, useRef, useState } from "preact/hooks";
import type { ViewProps } from "../main";
import { api } from "../api";
import { ErrorBox, fmtBytes, fmtNum, useInterval } from "../components";
import { formatDuration } from "../time";

/** Numeric leaves of an object, by dotted path. */
export function numericLeaves(o: unknown, prefix = "", out: Record<string, number> = {}): Record<string, number> {
  if (typeof o === "number") out[prefix] = o;
  else if (o && typeof o === "object" && !Array.isArray(o))
    for (const [k, v] of Object.entries(o)) numericLeaves(v, prefix ? `${prefix}.${k}` : k, out);
  return out;
}

function fmtValue(key: string, v: unknown) {
  if (typeof v === "number") {
    if (/bytes$/.test(key)) return fmtBytes(v);
    if (/seconds$/.test(key)) return `${formatDuration(v * 1000)} (${fmtNum(v)} s)`;
    return fmtNum(v);
  }
  if (v === null) return <span class="muted">none</span>;
  return String(v);
}

/** Any JSON, readably: nested objects as nested definition lists. */
function Tree({ value, name = "" }: { value: unknown; name?: string }) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const entries = Object.entries(value as Record<string, unknown>);
    if (!entries.length) return <span class="muted">{"{}"}</span>;
    return (
      <dl class="tree">
        {entries.map(([k, v]) => (
          <>
            <dt>{k}</dt>
            <dd>
              <Tree value={v} name={k} />
            </dd>
          </>
        ))}
      </dl>
    );
  }
  if (Array.isArray(value)) return <code>{JSON.stringify(value)}</code>;
  return <>{fmtValue(name, value)}</>;
}

export function Status(_: ViewProps) {
  const [s, setS] = useState<any>(null);
  const [error, setError] = useState<string | null>(null);
  const [rates, setRates] = useState<Record<string, number>>({});
  const prev = useRef<{ t: number; v: Record<string, number> } | null>(null);
  const load = async () => {
    try {
      const r = await api("api/v1/status/lumen");
      const t = performance.now();
      const v = numericLeaves(r?.ingest ?? {});
      if (prev.current) {
        const dt = (t - prev.current.t) / 1000;
        const next: Record<string, number> = {};
        for (const k of Object.keys(v)) next[k] = Math.max(0, (v[k] - (prev.current.v[k] ?? v[k])) / dt);
        setRates(next);
      }
      prev.current = { t, v };
      setS(r);
      setError(null);
    } catch (e: any) {
      setError(e?.status === 404 ? "this server has no /api/v1/status/lumen (an older Lumen?)" : String(e?.message ?? e));
    }
  };
  useEffect(() => {
    load();
  }, []);
  useInterval(load, 5000);
  if (!s) return <section class="view">{error ? <ErrorBox error={error} /> : <span class="muted">loading…</span>}</section>;
  const { version, revision, uptime_seconds, storage, ingest, config, ...rest } = s;
  const ingestTotals = numericLeaves(ingest ?? {});
  const problem = storage?.disk?.problem;
  return (
    <section class="view status">
      <ErrorBox error={error} />
      <div class="cards">
        <div class="card">
          <h3>Lumen {version}</h3>
          <div class="muted">revision {revision ?? "?"}</div>
          <div>up {uptime_seconds !== undefined ? formatDuration(Math.round(uptime_seconds) * 1000) : "?"}</div>
          {problem && <div class="error">disk: {String(problem)}</div>}
        </div>
        <div class="card">
          <h3>Ingest</h3>
          <table>
            <thead>
              <tr>
                <th>path</th>
                <th>total</th>
                <th>per second</th>
              </tr>
            </thead>
            <tbody>
              {Object.keys(ingestTotals).map((k) => (
                <tr>
                  <td>{k}</td>
                  <td>{fmtNum(ingestTotals[k])}</td>
                  <td>{k in rates ? fmtNum(+rates[k].toFixed(2)) : "…"}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <div class="muted">rates from polling every 5 s</div>
        </div>
        {storage && (
          <div class="card">
            <h3>Storage</h3>
            <Tree value={storage} />
          </div>
        )}
        {Object.keys(rest).length > 0 && (
          <div class="card">
            <h3>Other</h3>
            <Tree value={rest} />
          </div>
        )}
      </div>
      {config && (
        <details class="card">
          <summary>Configuration (secrets masked)</summary>
          <Tree value={config} />
        </details>
      )}
    </section>
  );
}
