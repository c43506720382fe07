// The lines around a line (its context), as Grafana's Loki data source finds them: the same stream,
// `query_range` backward from the line's time for the lines before and forward from it for the lines after.

import { formatSelector } from "./logql";

/** How far from the line to look, each way (Grafana's log context uses the same two hours). */
export const CONTEXT_WINDOW_MS = 2 * 3_600_000;

/** The selector of exactly one stream: every stream label, with `=`. */
export function streamSelector(labels: Record<string, string>): string {
  return formatSelector(
    Object.keys(labels)
      .sort()
      .map((name) => ({ name, op: "=" as const, value: labels[name] })),
  );
}

/**
 * The two `query_range` requests for `n` lines before and after the line at `ns` (nanoseconds, decimal) in
 * the stream `labels`. Both include the line's own time, so lines of the same nanosecond are not lost; the
 * line itself and lines found twice are dropped by {@link mergeContext}.
 */
export function contextRequests(labels: Record<string, string>, ns: string, n: number) {
  const t = BigInt(ns);
  const w = BigInt(CONTEXT_WINDOW_MS) * 1_000_000n;
  const query = streamSelector(labels);
  return {
    before: { query, start: String(t - w), end: String(t + 1n), limit: n + 1, direction: "backward" },
    after: { query, start: String(t), end: String(t + w), limit: n + 1, direction: "forward" },
  };
}

export interface ContextLine {
  ns: string;
  line: string;
}

const cmpNs = (a: string, b: string) => (a.length !== b.length ? a.length - b.length : a < b ? -1 : a > b ? 1 : 0);

/**
 * The context in time order, oldest first, without the line itself: at most `n` lines before it (the
 * nearest ones) and `n` after it. `before` and `after` are the entries of the two answers, in any order.
 */
export function mergeContext(row: ContextLine, before: ContextLine[], after: ContextLine[], n: number) {
  const seen = new Set<string>();
  let selfSkipped = false;
  const take = (xs: ContextLine[]) =>
    xs.filter((x) => {
      const key = x.ns + "\u0000" + x.line;
      if (!selfSkipped && x.ns === row.ns && x.line === row.line) {
        selfSkipped = true;
        seen.add(key);
        return false;
      }
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    });
  // Lines at the row's own time count as after it when the forward answer has them.
  const a = take([...after].sort((x, y) => cmpNs(x.ns, y.ns)));
  const b = take([...before].sort((x, y) => cmpNs(y.ns, x.ns)));
  return { before: b.slice(0, n).reverse(), after: a.slice(0, n) };
}
