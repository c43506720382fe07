import { useEffect, useRef, useState } from "preact/hooks";
import type { ComponentChildren } from "preact";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import {
  RELATIVE_RANGES,
  describeRange,
  fmtTime,
  fromDatetimeLocal,
  getTimeZone,
  resolveRange,
  setTimeZone,
  toDatetimeLocal,
  type TimeRange,
  type TimeZone,
} from "./time";
import { hoverRows } from "./hover";

/** The time zone times are shown in; re-renders the component when the user changes it. */
export function useTimeZone(): TimeZone {
  const [tz, setTz] = useState(getTimeZone());
  useEffect(() => {
    const f = () => setTz(getTimeZone());
    addEventListener("lumen-tz", f);
    return () => removeEventListener("lumen-tz", f);
  }, []);
  return tz;
}

// ---------- query box with history ----------

export function QueryBox(props: {
  value: string;
  onInput: (v: string) => void;
  onRun: (v: string) => void;
  historyKey: string;
  placeholder?: string;
  /** SQL: Enter is a newline and Ctrl+Enter runs. LogQL/PromQL: Enter runs, Shift+Enter newline. */
  ctrlEnterOnly?: boolean;
  rows?: number;
  suggest?: (text: string, caret: number) => Promise<{ items: string[]; from: number; to: number } | null>;
}) {
  const ref = useRef<HTMLTextAreaElement>(null);
  const histPos = useRef(-1);
  const [sugg, setSugg] = useState<{ items: string[]; from: number; to: number; sel: number } | null>(null);
  const suggSeq = useRef(0);

  const history = (): string[] => {
    try {
      return JSON.parse(localStorage.getItem(props.historyKey) || "[]");
    } catch {
      return [];
    }
  };
  const run = () => {
    const v = props.value;
    setSugg(null);
    if (v.trim()) {
      const h = [v, ...history().filter((x) => x !== v)].slice(0, 50);
      try {
        localStorage.setItem(props.historyKey, JSON.stringify(h));
      } catch {
        /* storage full or off */
      }
    }
    histPos.current = -1;
    props.onRun(v);
  };
  const accept = (item: string) => {
    if (!sugg) return;
    const v = props.value.slice(0, sugg.from) + item + props.value.slice(sugg.to);
    props.onInput(v);
    setSugg(null);
    const caret = sugg.from + item.length;
    requestAnimationFrame(() => ref.current?.setSelectionRange(caret, caret));
    updateSuggest(v, caret); // after a label name, offer its values
  };
  const updateSuggest = (text: string, caret: number) => {
    if (!props.suggest) return;
    const seq = ++suggSeq.current;
    props
      .suggest(text, caret)
      .then((r) => {
        if (seq !== suggSeq.current) return;
        setSugg(r && r.items.length ? { ...r, sel: 0 } : null);
      })
      .catch(() => setSugg(null));
  };
  const onKeyDown = (e: KeyboardEvent) => {
    if (sugg) {
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        e.preventDefault();
        const n = sugg.items.length;
        setSugg({ ...sugg, sel: (sugg.sel + (e.key === "ArrowDown" ? 1 : n - 1)) % n });
        return;
      }
      if (e.key === "Tab") {
        e.preventDefault();
        accept(sugg.items[sugg.sel]);
        return;
      }
      if (e.key === "Escape") {
        setSugg(null);
        return;
      }
    }
    if (e.key === "Enter") {
      if (e.ctrlKey || e.metaKey || (!props.ctrlEnterOnly && !e.shiftKey)) {
        e.preventDefault();
        run();
      }
      return;
    }
    if ((e.ctrlKey || e.metaKey) && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      e.preventDefault();
      const h = history();
      if (!h.length) return;
      histPos.current =
        e.key === "ArrowUp" ? Math.min(h.length - 1, histPos.current + 1) : Math.max(-1, histPos.current - 1);
      props.onInput(histPos.current < 0 ? "" : h[histPos.current]);
    }
  };
  return (
    <div class="querybox">
      <textarea
        ref={ref}
        data-querybox
        rows={props.rows ?? Math.min(8, Math.max(1, props.value.split("\n").length))}
        value={props.value}
        placeholder={props.placeholder}
        spellcheck={false}
        autocomplete="off"
        onInput={(e) => {
          const t = e.currentTarget;
          props.onInput(t.value);
          updateSuggest(t.value, t.selectionStart ?? t.value.length);
        }}
        onKeyDown={onKeyDown}
        onBlur={() => setTimeout(() => setSugg(null), 150)}
      />
      {sugg && (
        <ul class="suggest">
          {sugg.items.slice(0, 30).map((it, i) => (
            <li class={i === sugg.sel ? "sel" : ""} onMouseDown={(e) => (e.preventDefault(), accept(it))}>
              {it}
            </li>
          ))}
        </ul>
      )}
      <button class="primary" onClick={run}>
        Run
      </button>
    </div>
  );
}

// ---------- time range picker ----------

export function TimePicker(props: {
  range: TimeRange;
  onChange: (r: TimeRange) => void;
  refresh?: string;
  onRefresh?: (r: string) => void;
}) {
  const [open, setOpen] = useState(false);
  const [from, setFrom] = useState(props.range.from);
  const [to, setTo] = useState(props.range.to);
  const tz = useTimeZone();
  const [absFrom, setAbsFrom] = useState("");
  const [absTo, setAbsTo] = useState("");
  const [absError, setAbsError] = useState("");
  useEffect(() => {
    setFrom(props.range.from);
    setTo(props.range.to);
  }, [props.range.from, props.range.to]);
  // The absolute inputs start at the range in force, as wall-clock times in the chosen zone.
  useEffect(() => {
    if (!open) return;
    try {
      const { start, end } = resolveRange(props.range);
      setAbsFrom(toDatetimeLocal(start, tz));
      setAbsTo(toDatetimeLocal(end, tz));
    } catch {
      /* an unreadable range: leave the inputs empty */
    }
    setAbsError("");
  }, [open, props.range.from, props.range.to, tz]);
  return (
    <div class="timepicker">
      <button onClick={() => setOpen(!open)} title="Time range">
        {describeRange(props.range, tz)} ▾
      </button>
      {props.onRefresh && (
        <select value={props.refresh || ""} onChange={(e) => props.onRefresh!(e.currentTarget.value)} title="Auto-refresh">
          <option value="">refresh off</option>
          <option value="5s">every 5s</option>
          <option value="30s">every 30s</option>
        </select>
      )}
      {open && (
        <div class="popover">
          <div class="presets">
            {RELATIVE_RANGES.map((r) => (
              <button
                onClick={() => {
                  props.onChange({ from: `now-${r}`, to: "now" });
                  setOpen(false);
                }}
              >
                Last {r}
              </button>
            ))}
          </div>
          <form
            onSubmit={(e) => {
              e.preventDefault();
              props.onChange({ from, to });
              setOpen(false);
            }}
          >
            <label>
              From <input value={from} onInput={(e) => setFrom(e.currentTarget.value)} placeholder="now-1h or 2026-01-02 10:00" />
            </label>
            <label>
              To <input value={to} onInput={(e) => setTo(e.currentTarget.value)} placeholder="now" />
            </label>
            <button class="primary" type="submit">
              Apply
            </button>
          </form>
          <form
            class="absolute"
            onSubmit={(e) => {
              e.preventDefault();
              const [a, b] = [fromDatetimeLocal(absFrom, tz), fromDatetimeLocal(absTo, tz)];
              if (a === null || b === null) return setAbsError("pick both times");
              if (a >= b) return setAbsError("the start is not before the end");
              props.onChange({ from: String(a), to: String(b) });
              setOpen(false);
            }}
          >
            <label>
              From <input type="datetime-local" step="1" name="abs-from" value={absFrom} onInput={(e) => setAbsFrom(e.currentTarget.value)} />
            </label>
            <label>
              To <input type="datetime-local" step="1" name="abs-to" value={absTo} onInput={(e) => setAbsTo(e.currentTarget.value)} />
            </label>
            <button type="submit">Apply absolute</button>
            {absError && <span class="error-text">{absError}</span>}
          </form>
          <label class="tz">
            Time zone{" "}
            <select value={tz} onChange={(e) => setTimeZone(e.currentTarget.value as TimeZone)}>
              <option value="local">Browser ({Intl.DateTimeFormat().resolvedOptions().timeZone || "local"})</option>
              <option value="utc">UTC</option>
            </select>
          </label>
        </div>
      )}
    </div>
  );
}

// ---------- chart ----------

export const PALETTE = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16", "#f97316", "#64748b"];

export function Chart(props: {
  data: uPlot.AlignedData;
  series: { label: string; color: string; show?: boolean }[];
  bars?: boolean;
  stacked?: boolean;
  height?: number;
  /** The x axis' span in seconds (the query's range), instead of the data's. */
  xRange?: [number, number];
  onSelect?: (startMs: number, endMs: number) => void;
}) {
  const el = useRef<HTMLDivElement>(null);
  const tz = useTimeZone();
  const [theme, setTheme] = useState(document.documentElement.dataset.theme);
  useEffect(() => {
    const f = () => setTheme(document.documentElement.dataset.theme);
    addEventListener("lumen-theme", f);
    return () => removeEventListener("lumen-theme", f);
  }, []);
  useEffect(() => {
    if (!el.current) return;
    const node = el.current;
    const width = () => Math.max(200, node.clientWidth);
    const dark = theme === "dark";
    const axisColor = dark ? "#9ca3af" : "#4b5563";
    const grid = { stroke: dark ? "#374151" : "#e5e7eb", width: 1 };
    let data = props.data;
    if (props.stacked) {
      // Stack: each series' y is the sum of itself and the ones before; drawn last to first.
      const acc = new Array(data[0].length).fill(0);
      const stacked = [data[0]] as any[];
      for (let i = 1; i < data.length; i++) {
        stacked.push((data[i] as (number | null)[]).map((v, j) => (acc[j] += v ?? 0)));
      }
      data = stacked as uPlot.AlignedData;
    }
    const bars = props.bars ? uPlot.paths.bars!({ size: [0.9, 60], align: 1 }) : undefined;
    // The hover box: the time under the cursor and the (unstacked) values of the series there.
    const tip = document.createElement("div");
    tip.className = "hover";
    tip.style.display = "none";
    const showTip = (u: uPlot) => {
      const idx = u.cursor.idx;
      const h = idx == null || u.cursor.left == null || u.cursor.left < 0 ? null : hoverRows(props.data as any, props.series, idx);
      if (!h) {
        tip.style.display = "none";
        return;
      }
      tip.replaceChildren();
      const head = document.createElement("div");
      head.className = "time";
      head.textContent = fmtTime(h.time * 1000, tz).slice(0, 19) + (tz === "utc" ? " UTC" : "");
      tip.append(head);
      for (const r of h.rows) {
        const row = document.createElement("div");
        const dot = document.createElement("i");
        dot.style.background = r.color;
        const v = document.createElement("b");
        v.textContent = fmtNum(r.value);
        row.append(dot, v, " " + r.label);
        tip.append(row);
      }
      if (h.more) {
        const more = document.createElement("div");
        more.className = "muted";
        more.textContent = `and ${h.more} more`;
        tip.append(more);
      }
      if (!h.rows.length) tip.append("no value here");
      tip.style.display = "";
      // Beside the cursor, flipped to its left past the middle so that it stays inside the chart.
      const left = u.cursor.left!;
      const flip = left > u.over.clientWidth / 2;
      tip.style.left = flip ? "" : `${left + 14}px`;
      tip.style.right = flip ? `${u.over.clientWidth - left + 14}px` : "";
      tip.style.top = `${Math.max(0, (u.cursor.top ?? 0) - 10)}px`;
    };
    const opts: uPlot.Options = {
      width: width(),
      height: props.height ?? 220,
      legend: { show: false },
      tzDate: tz === "utc" ? (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC") : undefined,
      cursor: { drag: { x: !!props.onSelect, y: false } },
      scales: { x: props.xRange ? { time: true, range: () => props.xRange! } : { time: true } },
      axes: [
        { stroke: axisColor, grid, ticks: grid },
        { stroke: axisColor, grid, ticks: grid, size: 60 },
      ],
      series: [
        {},
        ...props.series.map((s) => ({
          label: s.label,
          stroke: s.color,
          fill: props.bars ? s.color : undefined,
          width: props.bars ? 0 : 1.5,
          show: s.show !== false,
          paths: bars,
          points: { show: false },
          spanGaps: false,
        })),
      ],
      hooks: {
        setCursor: [showTip],
        ...(props.onSelect
          ? {
              setSelect: [
                (u: uPlot) => {
                  if (u.select.width < 3) return;
                  const a = u.posToVal(u.select.left, "x");
                  const b = u.posToVal(u.select.left + u.select.width, "x");
                  props.onSelect!(a * 1000, b * 1000);
                },
              ],
            }
          : {}),
      },
    };
    if (props.stacked) {
      // Draw the tallest (last) stack first so the smaller ones stay visible over it.
      opts.series = [opts.series[0], ...opts.series.slice(1).reverse()];
      data = [data[0], ...(data.slice(1) as any[]).reverse()] as uPlot.AlignedData;
    }
    const u = new uPlot(opts, data, node);
    u.over.append(tip);
    const ro = new ResizeObserver(() => u.setSize({ width: width(), height: props.height ?? 220 }));
    ro.observe(node);
    return () => {
      ro.disconnect();
      u.destroy();
    };
  }, [props.data, props.series, props.bars, props.height, props.xRange?.[0], props.xRange?.[1], theme, tz]);
  return <div class="chart" ref={el} />;
}

// ---------- misc ----------

export function ErrorBox({ error }: { error: string | null }) {
  return error ? <div class="error" role="alert">{error}</div> : null;
}

export function Table(props: { columns: string[]; rows: ComponentChildren[][]; onRow?: (i: number) => void }) {
  return (
    <div class="tablewrap">
      <table>
        <thead>
          <tr>
            {props.columns.map((c) => (
              <th>{c}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {props.rows.map((r, i) => (
            <tr onClick={props.onRow ? () => props.onRow!(i) : undefined} class={props.onRow ? "clickable" : ""}>
              {r.map((c) => (
                <td>{c}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

/** Runs `f` every `every` (a duration like "5s") while set. */
export function useInterval(f: () => void, everyMs: number | null) {
  const saved = useRef(f);
  saved.current = f;
  useEffect(() => {
    if (!everyMs) return;
    const id = setInterval(() => saved.current(), everyMs);
    return () => clearInterval(id);
  }, [everyMs]);
}

export function download(name: string, text: string, type: string) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => {
    URL.revokeObjectURL(a.href);
    a.remove();
  }, 0);
}

export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}

export function fmtNum(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  return Math.abs(v) >= 1000 ? v.toFixed(1) : String(+v.toPrecision(6));
}

/** Lines of labels "{a="b", c="d"}" for display. */
export function labelsText(l: Record<string, string>, skip: string[] = []): string {
  return (
    "{" +
    Object.keys(l)
      .filter((k) => !skip.includes(k))
      .sort()
      .map((k) => `${k}=${JSON.stringify(l[k])}`)
      .join(", ") +
    "}"
  );
}
