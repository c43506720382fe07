import { useEffect, useState } from "preact/hooks";
import type { ViewProps } from "../main";
import { api, type Series } from "../api";
import { ErrorBox, Table, fmtNum, useInterval } from "../components";
import { formatSelector, quote } from "../logql";
import { fmtTime, formatDuration } from "../time";

export interface Device {
  key: string;
  labels: Record<string, string>; // identity labels (without __name__ and source)
  lastSeen: number; // epoch ms
  approx?: boolean; // from 1-minute buckets: the end of the last minute with samples
  values: Record<string, number>;
}

const METRIC = "lumen_ui_metric";

/**
 * The LogQL query for a device's messages. MQTT log streams carry the template's labels plus source="mqtt";
 * without a template the topic is a field of the stream {source="mqtt"}, not a label.
 */
export function deviceLogQuery(labels: Record<string, string>): string {
  const ms = [{ name: "source", op: "=" as const, value: "mqtt" }];
  for (const k of Object.keys(labels).sort()) if (k !== "topic") ms.push({ name: k, op: "=", value: labels[k] });
  return formatSelector(ms) + ("topic" in labels ? ` | topic=${quote(labels.topic)}` : "");
}

/**
 * The two instant queries the view makes: every MQTT series' latest value over the last day, and each
 * device's newest sample time. `timestamp()` of a plain selector is the time of the sample it picked (of
 * anything else, the evaluation time), so the second asks for it with a lookback of a day: the newest
 * sample of each series in the same window as `last_over_time(...[24h])`, exact to the millisecond, from
 * one scan of the same series. `max without ()` drops the metric name and takes the newest per device.
 */
export const LATEST_QUERY = 'last_over_time({source="mqtt"}[24h])';
export const SEEN_QUERY = { query: 'max without () (timestamp({source="mqtt"}))', lookback_delta: "24h" };

/** The `samples` column of a label in Lumen's SQL (labels named like a fixed column get `_label`). */
function sqlColumn(name: string): string {
  return '"' + (["time", "value", "metric", "labels"].includes(name) ? name + "_label" : name).replace(/"/g, '""') + '"';
}

/**
 * SQL for the newest sample time of one device, for a device SEEN_QUERY has no time for: its series all
 * end in a stale marker (a Sparkplug death), which the selector does not pick, while `samples` leaves
 * stale markers out. Equality on its labels is pushed down to the store's index; `IS NULL` on the other
 * MQTT label names keeps out devices whose labels are a superset of its own.
 */
export function deviceSeenSql(labels: Record<string, string>, labelNames: string[]): string {
  const conds = ["source = 'mqtt'", "time > now() - INTERVAL '24 hours'"];
  for (const k of Object.keys(labels).sort()) conds.push(`${sqlColumn(k)} = '${labels[k].replace(/'/g, "''")}'`);
  for (const k of [...new Set(labelNames)].sort())
    if (!(k in labels) && k !== "__name__" && k !== "source") conds.push(`${sqlColumn(k)} IS NULL`);
  return `SELECT max(time) AS t FROM samples WHERE ${conds.join(" AND ")}`;
}

/**
 * Groups MQTT series into devices: one per label set without `__name__`. `seen` holds the newest sample
 * time per device (SEEN_QUERY's answer, and deviceSeenSql's for devices whose series a stale marker
 * ended); `buckets`, for devices still without one, per-minute counts of samples (a range answer), whose
 * last step with samples is an approximate last seen.
 */
export function groupDevices(latest: Series[], seen: Series[], buckets: Series[] = []): Device[] {
  const key = (m: Record<string, string>) =>
    JSON.stringify(
      Object.keys(m)
        .filter((k) => k !== "__name__" && k !== METRIC)
        .sort()
        .map((k) => [k, m[k]]),
    );
  const devs = new Map<string, Device>();
  for (const s of latest) {
    const k = key(s.metric);
    let d = devs.get(k);
    if (!d) {
      const labels = { ...s.metric };
      delete labels.__name__;
      delete labels.source;
      d = { key: k, labels, lastSeen: 0, values: {} };
      devs.set(k, d);
    }
    if (s.value) d.values[s.metric.__name__ ?? "value"] = Number(s.value[1]);
  }
  for (const s of seen) {
    const d = devs.get(key(s.metric));
    const t = s.value ? Number(s.value[1]) * 1000 : NaN;
    // Seconds with a millisecond fraction: round away the float's error.
    if (d && Number.isFinite(t)) d.lastSeen = Math.max(d.lastSeen, Math.round(t));
  }
  for (const s of buckets) {
    const d = devs.get(key(s.metric));
    if (!d || (d.lastSeen && !d.approx)) continue;
    for (const [t, v] of s.values ?? [])
      if (Number(v) > 0 && t * 1000 > d.lastSeen) {
        d.lastSeen = t * 1000;
        d.approx = true;
      }
  }
  return [...devs.values()].sort((a, b) => b.lastSeen - a.lastSeen || a.key.localeCompare(b.key));
}

export function lastSeenText(d: Device, now: number): string {
  if (!d.lastSeen) return "?";
  if (d.approx) {
    const min = Math.floor((now - d.lastSeen) / 60_000);
    return min < 1 ? "< 1m ago" : `~${formatDuration(min * 60_000)} ago`;
  }
  return formatDuration(Math.max(0, Math.floor((now - d.lastSeen) / 1000)) * 1000) + " ago";
}

export function Devices({ params, setParams, navigate }: ViewProps) {
  const [devices, setDevices] = useState<Device[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [sel, setSel] = useState<string | null>(null);
  const q = params.q ?? "";
  const load = async () => {
    try {
      const [a, b] = await Promise.all([
        api("api/v1/query", { params: { query: LATEST_QUERY } }),
        api("api/v1/query", { params: SEEN_QUERY }).catch(() => ({ data: { result: [] } })),
      ]);
      const seen: Series[] = b.data.result;
      let devs = groupDevices(a.data.result, seen);
      const missing = devs.filter((d) => !d.lastSeen).slice(0, 20);
      if (missing.length) {
        // Devices whose series a stale marker ended: their newest sample from SQL, a few at most.
        const names = a.data.result.flatMap((s: Series) => Object.keys(s.metric));
        const times = await Promise.all(
          missing.map((d) =>
            api("api/v1/sql", { method: "POST", body: deviceSeenSql(d.labels, names), contentType: "text/plain" })
              .then((r) => Date.parse(r.rows?.[0]?.t ?? ""))
              .catch(() => NaN),
          ),
        );
        missing.forEach((d, i) => {
          if (Number.isFinite(times[i])) seen.push({ metric: { ...d.labels, source: "mqtt" }, value: [0, String(times[i] / 1000)] });
        });
        devs = groupDevices(a.data.result, seen);
      }
      if (devs.some((d) => !d.lastSeen)) {
        // Fallback: the last minute with samples over the last 24 hours. label_replace keeps the metric
        // name apart, so that the series of one device stay distinct when count_over_time drops it.
        const end = Math.floor(Date.now() / 1000);
        const r = await api("api/v1/query_range", {
          params: { query: `label_replace(count_over_time({source="mqtt"}[1m]), "${METRIC}", "$1", "__name__", "(.+)")`, start: end - 86400, end, step: 60 },
        }).catch(() => null);
        if (r) devs = groupDevices(a.data.result, seen, r.data.result);
      }
      setDevices(devs);
      setError(null);
    } catch (e: any) {
      setError(String(e?.message ?? e));
    }
  };
  useEffect(() => {
    load();
  }, []);
  useInterval(load, 15_000);

  if (error) return <section class="view"><ErrorBox error={error} /></section>;
  if (!devices) return <section class="view muted">loading…</section>;
  if (!devices.length)
    return (
      <section class="view">
        <p class="muted empty">No MQTT device has reported in the last 24 hours (series with source="mqtt").</p>
      </section>
    );
  const idCols = [...new Set(devices.flatMap((d) => Object.keys(d.labels)))].sort();
  const metricCols = [...new Set(devices.flatMap((d) => Object.keys(d.values)))].sort();
  const shown = devices.filter((d) => !q || JSON.stringify(d.labels).toLowerCase().includes(q.toLowerCase()));
  const now = Date.now();
  const selDev = devices.find((d) => d.key === sel);
  const matchers = (d: Device) => [
    { name: "source", op: "=" as const, value: "mqtt" },
    ...Object.keys(d.labels)
      .sort()
      .map((k) => ({ name: k, op: "=" as const, value: d.labels[k] })),
  ];
  return (
    <section class="view">
      <div class="toolbar">
        <input placeholder="filter devices" value={q} onInput={(e) => setParams({ ...params, q: e.currentTarget.value })} />
        <span class="muted">{devices.length} devices · refreshes every 15s</span>
      </div>
      {selDev && (
        <div class="card device">
          <b>{Object.entries(selDev.labels).map(([k, v]) => `${k}=${v}`).join(" ")}</b>
          <button onClick={() => navigate("metrics", { query: formatSelector(matchers(selDev)), from: "now-6h", to: "now" })}>Metrics →</button>
          <button onClick={() => navigate("logs", { query: deviceLogQuery(selDev.labels), from: "now-6h", to: "now" })}>Logs →</button>
          <button onClick={() => setSel(null)}>✕</button>
        </div>
      )}
      <Table
        columns={[...idCols, "last seen", ...metricCols]}
        onRow={(i) => setSel(shown[i].key)}
        rows={shown.map((d) => [
          ...idCols.map((c) => d.labels[c] ?? ""),
          <span title={d.lastSeen ? fmtTime(d.lastSeen) : ""}>{lastSeenText(d, now)}</span>,
          ...metricCols.map((m) => (m in d.values ? fmtNum(d.values[m]) : "")),
        ])}
      />
    </section>
  );
}
