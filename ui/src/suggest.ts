import { api } from "./api";
import { findSelector } from "./logql";

const cache = new Map<string, Promise<string[]>>();
function cached(path: string, load: () => Promise<string[]> = () => api(path).then((r) => (r.data ?? []) as string[])): Promise<string[]> {
  let p = cache.get(path);
  if (!p) {
    p = load();
    p.catch(() => cache.delete(path));
    cache.set(path, p);
    setTimeout(() => cache.delete(path), 60_000);
  }
  return p;
}

export interface Suggestions {
  items: string[];
  from: number;
  to: number;
}

/** Where a name is being typed outside any selector: its start and the part typed, or null. */
function nameAt(before: string, startChar: RegExp): { from: number; part: string } | null {
  const m = /[A-Za-z_:][\w:.]*$/.exec(before);
  const from = m ? m.index : before.length;
  const prev = before[from - 1] ?? "";
  if (prev && !startChar.test(prev)) return null;
  return { from, part: m ? m[0] : "" };
}

/** True when the caret is inside a string or a `{...}` selector. */
function inStringOrSelector(before: string): boolean {
  let quote = "";
  let depth = 0;
  for (let i = 0; i < before.length; i++) {
    const c = before[i];
    if (quote) {
      if (c === "\\" && quote !== "`") i++;
      else if (c === quote) quote = "";
    } else if (c === '"' || c === "`" || c === "'") quote = c;
    else if (c === "{") depth++;
    else if (c === "}") depth = Math.max(0, depth - 1);
  }
  return quote !== "" || depth > 0;
}

/**
 * Where a LogQL query takes a parsed field name: right after a `|` (a label filter, `drop`, `keep`), after
 * `by (`/`without (` and their commas, and after `unwrap`. Null elsewhere.
 */
export function fieldPosition(text: string, caret: number): { from: number; part: string } | null {
  const before = text.slice(0, caret);
  const sel = findSelector(before);
  if (!sel || inStringOrSelector(before)) return null;
  const at = nameAt(before, /[\s|(,]/);
  if (!at) return null;
  const head = before.slice(0, at.from);
  if (/\|\s*$/.test(head) || /\b(by|without)\s*\([^)]*$/.test(head) || /\b(unwrap|drop|keep)\s+([\w.]+\s*,\s*)*$/.test(head)) return at;
  return null;
}

/** The names in `names` that continue `part` (and are not just it), in their order. */
export function completions(names: string[], part: string): string[] {
  return names.filter((n) => n.startsWith(part) && n !== part);
}

/**
 * Parsed field names (`/loki/api/v1/detected_fields` over the query's selector and the view's range) where
 * a LogQL query takes one, label names and values inside the selector.
 */
export async function logqlSuggest(text: string, caret: number, range: () => { start: string; end: string }): Promise<Suggestions | null> {
  const inSelector = await labelSuggest("loki/api/v1/", text, caret);
  if (inSelector) return inSelector;
  const at = fieldPosition(text, caret);
  if (!at) return null;
  const sel = findSelector(text)!;
  const query = text.slice(sel.start, sel.end);
  const { start, end } = range();
  const fields = await cached(`detected_fields ${query} ${start.slice(0, -11)}`, () =>
    api("loki/api/v1/detected_fields", { params: { query, start, end } }).then((r) => ((r.fields ?? []) as { label: string }[]).map((f) => f.label)),
  );
  return { items: completions(fields, at.part), from: at.from, to: caret };
}

/** Where a PromQL query takes a metric name: a name being typed outside strings, selectors and ranges. */
export function metricPosition(text: string, caret: number): { from: number; part: string } | null {
  const before = text.slice(0, caret);
  if (inStringOrSelector(before) || /\[[^\]]*$/.test(before)) return null;
  const at = nameAt(before, /[\s(,+\-*/%^=<>!]/);
  if (!at || !at.part) return null;
  // Not the name of a label in `by (...)`/`without (...)`/`on (...)`/`ignoring (...)`.
  if (/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*$/.test(before.slice(0, at.from))) return null;
  return at;
}

/** Metric names (`/api/v1/label/__name__/values`) where a PromQL query takes one; label names and values inside `{}`. */
export async function promqlSuggest(text: string, caret: number): Promise<Suggestions | null> {
  const inSelector = await labelSuggest("api/v1/", text, caret);
  if (inSelector) return inSelector;
  const at = metricPosition(text, caret);
  if (!at) return null;
  const names = await cached("api/v1/label/__name__/values");
  return { items: completions(names, at.part), from: at.from, to: caret };
}

/**
 * Suggestions inside a selector: label names after "{" or ",", values after `name="`.
 * `prefix` is "loki/api/v1/" or "api/v1/".
 */
export async function labelSuggest(prefix: string, text: string, caret: number): Promise<Suggestions | null> {
  const before = text.slice(0, caret);
  const open = before.lastIndexOf("{");
  if (open < 0 || before.lastIndexOf("}") > open) return null;
  const inner = before.slice(open + 1);
  const val = /([A-Za-z_][\w.]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)$/.exec(inner);
  if (val) {
    const values = await cached(`${prefix}label/${encodeURIComponent(val[1])}/values`);
    const part = val[3];
    const items = values.filter((v) => v.startsWith(part) && v !== part).map((v) => JSON.stringify(v).slice(1) );
    return { items, from: caret - part.length, to: caret };
  }
  const name = /(?:^|,)\s*([A-Za-z_][\w.]*)?$/.exec(inner);
  if (name) {
    const part = name[1] ?? "";
    const names = await cached(`${prefix}labels`);
    return { items: names.filter((n) => n.startsWith(part) && n !== part).map((n) => n + '="'), from: caret - part.length, to: caret };
  }
  return null;
}
