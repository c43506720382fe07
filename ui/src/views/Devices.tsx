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

/** Groups MQTT series into devices: one per label set without `__name__`. */
export function groupDevices(latest: Series[], stamps: Series[]): Device[] {
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
  for (const s of stamps) {
    const d = devs.get(key(s.metric));
    if (!d) continue;
    // A sample time equal to the evaluation time is the evaluation time, not when the device reported.
    if (s.value && Number(s.value[1]) !== Number(s.value[0])) d.lastSeen = Math.max(d.lastSeen, Number(s.value[1]) * 1000);
    for (const [t, v] of s.values ?? [])
      if (Number(v) > 0 && (!d.lastSeen || d.approx) && t * 1000 > d.lastSeen) {
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
      // label_replace keeps the metric name, so that timestamp() (which drops __name__) gives distinct series.
      const [a, b] = await Promise.all([
        api("api/v1/query", { params: { query: 'last_over_time({source="mqtt"}[24h])' } }),
        api("api/v1/query", {
          params: { query: `timestamp(label_replace(last_over_time({source="mqtt"}[24h]), "${METRIC}", "$1", "__name__", "(.+)"))` },
        }).catch(() => ({ data: { result: [] } })),
      ]);
      let devs = groupDevices(a.data.result, b.data.result);
      if (devs.some((d) => !d.lastSeen)) {
        // Fallback: the last minute with samples over the last 24 hours.
        const end = Math.floor(Date.now() / 1000);
        const r = await api("api/v1/query_range", {
          params: { query: `label_replace(count_over_time({source="mqtt"}[1m]), "${METRIC}", "$1", "__name__", "(.+)")`, start: end - 86400, end, step: 60 },
        }).catch(() => null);
        if (r) devs = groupDevices(a.data.result, [...b.data.result, ...r.data.result]);
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
