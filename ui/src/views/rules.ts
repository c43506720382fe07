// The Rules view's logic: Prometheus' /api/v1/rules answers (PromQL at api/v1/rules, LogQL at
// prometheus/api/v1/rules) summarized, filtered and sorted; no DOM here, so vitest covers it.

import { fmtNum } from "../components";
import { formatDuration } from "../time";

export type Lang = "promql" | "logql";

export interface RuleAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  state: string; // "pending" | "firing"
  activeAt: string; // RFC 3339
  keepFiringSince?: string;
  value: string; // Go's 'e' format: "1e+00", "NaN", "+Inf"
}

export interface Rule {
  type: "alerting" | "recording";
  name: string;
  query: string;
  labels?: Record<string, string>;
  health: string; // "ok" | "err" | "unknown"
  lastError?: string;
  evaluationTime?: number; // s
  lastEvaluation?: string; // RFC 3339; "0001-01-01T00:00:00Z" when never
  // alerting rules only:
  state?: string; // "firing" | "pending" | "inactive"
  duration?: number; // `for`, s
  keepFiringFor?: number; // s
  annotations?: Record<string, string>;
  alerts?: RuleAlert[] | null; // null with exclude_alerts
}

export interface RuleGroup {
  name: string;
  file: string;
  rules: Rule[];
  interval: number; // s
  limit?: number;
  evaluationTime?: number;
  lastEvaluation?: string;
}

/** A group with the language of the API it came from. */
export interface Group extends RuleGroup {
  lang: Lang;
}

export const LANGS: { lang: Lang; path: string; label: string; view: string }[] = [
  { lang: "promql", path: "api/v1/rules", label: "PromQL", view: "metrics" },
  { lang: "logql", path: "prometheus/api/v1/rules", label: "LogQL", view: "logs" },
];

export type RuleState = "firing" | "pending" | "inactive" | "recording";
export const STATE_FILTERS = ["all", "firing", "pending", "inactive", "recording", "error"] as const;
export type StateFilter = (typeof STATE_FILTERS)[number];

export function ruleState(r: Rule): RuleState {
  if (r.type === "recording") return "recording";
  return r.state === "firing" || r.state === "pending" ? r.state : "inactive";
}

export function isError(r: Rule): boolean {
  return r.health === "err";
}

/** The groups of one rules answer, tagged with their language (an answer without data gives none). */
export function groupsOf(answer: any, lang: Lang): Group[] {
  const gs = answer?.data?.groups;
  if (!Array.isArray(gs)) return [];
  return gs.map((g: RuleGroup) => ({ ...g, rules: Array.isArray(g.rules) ? g.rules : [], lang }));
}

export interface Summary {
  groups: number;
  rules: number;
  firing: number;
  pending: number;
  inactive: number;
  recording: number;
  error: number;
}

export function summarize(groups: Group[]): Summary {
  const s: Summary = { groups: groups.length, rules: 0, firing: 0, pending: 0, inactive: 0, recording: 0, error: 0 };
  for (const g of groups)
    for (const r of g.rules) {
      s.rules++;
      s[ruleState(r)]++;
      if (isError(r)) s.error++;
    }
  return s;
}

function rank(r: Rule): number {
  const s = ruleState(r);
  return s === "firing" ? 0 : s === "pending" ? 1 : 2;
}

/** Firing first, then pending, then by name. */
export function sortRules(rules: Rule[]): Rule[] {
  return [...rules].sort((a, b) => rank(a) - rank(b) || a.name.localeCompare(b.name));
}

/** Firing before pending, then by labels. */
export function sortAlerts(alerts: RuleAlert[]): RuleAlert[] {
  const key = (a: RuleAlert) =>
    Object.keys(a.labels ?? {})
      .sort()
      .map((k) => `${k}=${a.labels[k]}`)
      .join(",");
  return [...alerts].sort((a, b) => (a.state === "firing" ? 0 : 1) - (b.state === "firing" ? 0 : 1) || key(a).localeCompare(key(b)));
}

/** By language (PromQL first), file, group name. */
export function sortGroups(groups: Group[]): Group[] {
  const li = (l: Lang) => LANGS.findIndex((x) => x.lang === l);
  return [...groups].sort((a, b) => li(a.lang) - li(b.lang) || a.file.localeCompare(b.file) || a.name.localeCompare(b.name));
}

export function matchesState(r: Rule, state: string): boolean {
  if (!state || state === "all") return true;
  if (state === "error") return isError(r);
  return ruleState(r) === state;
}

/** Case-insensitive: the rule's or group's name, or a value of the rule's labels or its alerts' labels. */
export function matchesText(g: Group, r: Rule, text: string): boolean {
  const t = text.trim().toLowerCase();
  if (!t) return true;
  const has = (s: string | undefined) => !!s && s.toLowerCase().includes(t);
  if (has(r.name) || has(g.name)) return true;
  if (Object.values(r.labels ?? {}).some(has)) return true;
  return (r.alerts ?? []).some((a) => Object.values(a.labels ?? {}).some(has));
}

/**
 * The groups to show, sorted, each with its matching rules sorted; with a filter on, groups left without
 * rules are dropped.
 */
export function filterGroups(groups: Group[], text: string, state: string): Group[] {
  const filtering = !!text.trim() || (!!state && state !== "all");
  const out: Group[] = [];
  for (const g of sortGroups(groups)) {
    const rules = sortRules(g.rules.filter((r) => matchesState(r, state) && matchesText(g, r, text)));
    if (rules.length || !filtering) out.push({ ...g, rules });
  }
  return out;
}

/** An alert's value ("1e+00", "NaN", "+Inf", "-Inf") as a number. */
export function parseValue(v: string | number | undefined | null): number {
  if (typeof v === "number") return v;
  const s = String(v ?? "").trim();
  if (/^\+?inf$/i.test(s)) return Infinity;
  if (/^-inf$/i.test(s)) return -Infinity;
  if (!s) return NaN;
  return Number(s);
}

export function fmtValue(v: string | number | undefined | null): string {
  const n = parseValue(v);
  if (Number.isNaN(n)) return "NaN";
  if (!Number.isFinite(n)) return n > 0 ? "+Inf" : "-Inf";
  return fmtNum(n);
}

/** An RFC 3339 time as epoch ms; null for Go's zero time ("never") or what cannot be read. */
export function parseTimeOrNever(s: string | undefined): number | null {
  if (!s || s.startsWith("0001-01-01")) return null;
  const t = Date.parse(s);
  return Number.isNaN(t) ? null : t;
}

/** "5s ago", "1h2m ago", "just now", "never". */
export function ago(s: string | undefined, now: number): string {
  const t = parseTimeOrNever(s);
  if (t === null) return "never";
  const sec = Math.floor((now - t) / 1000);
  return sec < 1 ? "just now" : formatDuration(sec * 1000) + " ago";
}

/** Seconds → "1h", "30s", "12ms", "<1ms", "0s". */
export function fmtSeconds(s: number | undefined): string {
  if (s === undefined || s === null || !Number.isFinite(s)) return "?";
  const ms = s * 1000;
  return ms > 0 && ms < 0.5 ? "<1ms" : formatDuration(ms);
}
