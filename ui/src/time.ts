// Time ranges: relative ("now-1h"), durations ("5m"), absolute (RFC 3339, "YYYY-MM-DD HH:MM", epoch).

const UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
  y: 365 * 86_400_000,
};

/** "5m", "1h30m", "250ms" → milliseconds; null when not a duration. */
export function parseDuration(s: string): number | null {
  const t = s.trim();
  if (!t) return null;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)/y;
  let pos = 0;
  let total = 0;
  while (pos < t.length) {
    re.lastIndex = pos;
    const m = re.exec(t);
    if (!m) return null;
    total += parseFloat(m[1]) * UNITS[m[2]];
    pos = re.lastIndex;
  }
  return total;
}

/** Milliseconds → "1h30m" (largest units first; "0s" for 0). */
export function formatDuration(ms: number): string {
  if (ms <= 0) return "0s";
  let rest = Math.round(ms);
  let out = "";
  for (const u of ["d", "h", "m", "s", "ms"]) {
    const n = Math.floor(rest / UNITS[u]);
    if (n > 0) {
      out += n + u;
      rest -= n * UNITS[u];
    }
  }
  return out;
}

// ---- the time zone times are shown and read in: the browser's, or UTC (a preference, like the theme) ----

export type TimeZone = "local" | "utc";
const TZ_KEY = "lumen.tz";

export function getTimeZone(): TimeZone {
  try {
    return localStorage.getItem(TZ_KEY) === "utc" ? "utc" : "local";
  } catch {
    return "local";
  }
}

/** Stores the choice and tells the page (the `lumen-tz` event), which redraws its times. */
export function setTimeZone(tz: TimeZone) {
  try {
    if (tz === "utc") localStorage.setItem(TZ_KEY, "utc");
    else localStorage.removeItem(TZ_KEY);
  } catch {
    /* storage off: the choice lasts for this page only */
  }
  dispatchEvent(new Event("lumen-tz"));
}

/** Epoch ms of a wall-clock time in `tz` (month from 1). */
function wallClock(tz: TimeZone, y: number, mo: number, d: number, h = 0, mi = 0, sec = 0, ms = 0): number {
  return tz === "utc" ? Date.UTC(y, mo - 1, d, h, mi, sec, ms) : new Date(y, mo - 1, d, h, mi, sec, ms).getTime();
}

/** The wall-clock fields of `ms` in `tz`. */
function fields(ms: number, tz: TimeZone) {
  const d = new Date(ms);
  return tz === "utc"
    ? { y: d.getUTCFullYear(), mo: d.getUTCMonth() + 1, d: d.getUTCDate(), h: d.getUTCHours(), mi: d.getUTCMinutes(), s: d.getUTCSeconds(), ms: d.getUTCMilliseconds() }
    : { y: d.getFullYear(), mo: d.getMonth() + 1, d: d.getDate(), h: d.getHours(), mi: d.getMinutes(), s: d.getSeconds(), ms: d.getMilliseconds() };
}

const pad = (n: number, w = 2) => String(n).padStart(w, "0");

/** `ms` as the value of an `<input type="datetime-local" step="1">`: "YYYY-MM-DDTHH:MM:SS" in `tz`. */
export function toDatetimeLocal(ms: number, tz: TimeZone = getTimeZone()): string {
  const f = fields(ms, tz);
  return `${f.y}-${pad(f.mo)}-${pad(f.d)}T${pad(f.h)}:${pad(f.mi)}:${pad(f.s)}`;
}

/** The value of a datetime-local input, read in `tz` → epoch ms, or null. */
export function fromDatetimeLocal(s: string, tz: TimeZone = getTimeZone()): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?$/.exec(s.trim());
  if (!m) return null;
  const [, y, mo, d, h, mi, sec, frac] = m;
  return wallClock(tz, +y, +mo, +d, +h, +mi, +(sec ?? 0), +(frac ?? "0").padEnd(3, "0"));
}

/**
 * A point in time → epoch milliseconds, or null when it cannot be read.
 * "now", "now-1h", "now+5m", "-15m" (= now-15m), an epoch in seconds or milliseconds,
 * RFC 3339 / ISO 8601, or "YYYY-MM-DD[ HH:MM[:SS]]" in the chosen time zone (`tz`).
 */
export function parseTime(s: string, now: number = Date.now(), tz: TimeZone = getTimeZone()): number | null {
  const t = s.trim();
  if (!t) return null;
  if (t === "now") return now;
  const rel = /^(?:now)?\s*([+-])\s*(\d.*)$/.exec(t);
  if (rel) {
    const d = parseDuration(rel[2]);
    if (d === null) return null;
    return rel[1] === "-" ? now - d : now + d;
  }
  if (/^\d+(\.\d+)?$/.test(t)) {
    const n = parseFloat(t);
    return n > 1e11 ? Math.round(n) : Math.round(n * 1000);
  }
  const local = /^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?$/.exec(t);
  if (local) {
    const [, y, mo, d, h, mi, sec] = local;
    return wallClock(tz, +y, +mo, +d, +(h ?? 0), +(mi ?? 0), +(sec ?? 0));
  }
  const iso = Date.parse(t);
  return Number.isNaN(iso) ? null : iso;
}

export interface TimeRange {
  from: string;
  to: string;
}

export const RELATIVE_RANGES = ["5m", "15m", "1h", "6h", "24h", "7d"];

/** Resolves a range to [start, end] epoch ms; throws with a readable message when invalid. */
export function resolveRange(r: TimeRange, now: number = Date.now()): { start: number; end: number } {
  const start = parseTime(r.from, now);
  const end = parseTime(r.to || "now", now);
  if (start === null) throw new Error(`cannot read the start time "${r.from}"`);
  if (end === null) throw new Error(`cannot read the end time "${r.to}"`);
  if (start >= end) throw new Error("the start of the range is not before its end");
  return { start, end };
}

const NICE_STEPS = [
  1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800,
];

/** A round step in seconds giving at most about `points` points over the range (at least 1 s). */
export function chooseStep(startMs: number, endMs: number, points = 200): number {
  const span = Math.max(0, endMs - startMs) / 1000;
  const raw = span / Math.max(1, points);
  for (const s of NICE_STEPS) if (s >= raw) return s;
  return Math.ceil(raw / 86400) * 86400;
}

/** Label for a range: "Last 1h", or "from → to" with absolute ends shown as times in `tz`. */
export function describeRange(r: TimeRange, tz: TimeZone = getTimeZone()): string {
  const m = /^now-(.+)$/.exec(r.from.trim());
  if (m && (r.to.trim() === "now" || r.to.trim() === "")) return `Last ${m[1]}`;
  const end = (s: string) => {
    if (/^now\b|^[+-]/.test(s.trim())) return s.trim();
    const t = parseTime(s, Date.now(), tz);
    return t === null ? s : fmtTime(t, tz).slice(0, 19);
  };
  return `${end(r.from)} → ${end(r.to || "now")}${tz === "utc" ? " UTC" : ""}`;
}

export function fmtTime(ms: number, tz: TimeZone = getTimeZone()): string {
  const f = fields(ms, tz);
  return `${f.y}-${pad(f.mo)}-${pad(f.d)} ${pad(f.h)}:${pad(f.mi)}:${pad(f.s)}.${pad(f.ms, 3)}`;
}
