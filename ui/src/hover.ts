// What the chart's hover box shows: the time under the cursor and the values of the series there.

export interface HoverRow {
  label: string;
  color: string;
  value: number;
}

/**
 * The rows for the point `idx` of `data` (uPlot's aligned data: x values, then one array per series, not
 * stacked): the shown series with a value there, largest first, at most `max` (`more` counts the rest).
 */
export function hoverRows(
  data: ArrayLike<number | null | undefined>[],
  series: { label: string; color: string; show?: boolean }[],
  idx: number,
  max = 12,
): { time: number; rows: HoverRow[]; more: number } | null {
  const xs = data[0];
  if (!xs || idx < 0 || idx >= xs.length || xs[idx] == null) return null;
  const rows: HoverRow[] = [];
  series.forEach((s, i) => {
    const v = data[i + 1]?.[idx];
    if (s.show !== false && v != null && Number.isFinite(v)) rows.push({ label: s.label, color: s.color, value: v });
  });
  rows.sort((a, b) => b.value - a.value);
  return { time: xs[idx] as number, rows: rows.slice(0, max), more: Math.max(0, rows.length - max) };
}
