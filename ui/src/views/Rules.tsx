import { useEffect, useRef, useState } from "preact/hooks";
import type { ViewProps } from "../main";
import { api } from "../api";
import { buildHash } from "../hash";
import { ErrorBox, useInterval } from "../components";
import { fmtTime } from "../time";
import {
  LANGS,
  STATE_FILTERS,
  ago,
  filterGroups,
  fmtSeconds,
  fmtValue,
  groupsOf,
  isError,
  parseTimeOrNever,
  ruleState,
  sortAlerts,
  summarize,
  type Group,
  type Lang,
  type Rule,
  type RuleAlert,
} from "./rules";

const REFRESH_MS = 10_000;
const ALERTS_SHOWN = 50;

const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? "" : "s"}`;

function absTime(s: string | undefined): string {
  const t = parseTimeOrNever(s);
  return t === null ? "" : fmtTime(t);
}

function Chips({ labels, skip = [] }: { labels?: Record<string, string>; skip?: string[] }) {
  const keys = Object.keys(labels ?? {})
    .filter((k) => !skip.includes(k))
    .sort();
  if (!keys.length) return null;
  return (
    <span class="chips">
      {keys.map((k) => (
        <span class="chip">
          {k}={labels![k]}
        </span>
      ))}
    </span>
  );
}

/** Annotations, summary and description first. */
function Annotations({ annotations, muted }: { annotations?: Record<string, string>; muted?: boolean }) {
  const order = (k: string) => (k === "summary" ? 0 : k === "description" ? 1 : 2);
  const keys = Object.keys(annotations ?? {}).sort((a, b) => order(a) - order(b) || a.localeCompare(b));
  if (!keys.length) return null;
  return (
    <div class={"annotations" + (muted ? " muted" : "")}>
      {keys.map((k) => (
        <div class={"ann ann-" + k}>
          <span class="muted">{k}:</span> {annotations![k]}
        </div>
      ))}
    </div>
  );
}

function AlertItem({ a, now }: { a: RuleAlert; now: number }) {
  return (
    <div class="alert">
      <div class="alert-head">
        <span class={"badge state " + a.state}>{a.state}</span>
        <Chips labels={a.labels} skip={["alertname"]} />
        <span class="muted" title={absTime(a.activeAt)}>
          active {ago(a.activeAt, now)}
        </span>
        <span class="muted">
          value <b class="value">{fmtValue(a.value)}</b>
        </span>
      </div>
      <Annotations annotations={a.annotations} />
    </div>
  );
}

function RuleItem({ g, r, now }: { g: Group; r: Rule; now: number }) {
  const [allAlerts, setAllAlerts] = useState(false);
  const st = ruleState(r);
  const lang = LANGS.find((l) => l.lang === g.lang)!;
  const alerts = sortAlerts(r.alerts ?? []);
  const shown = allAlerts ? alerts : alerts.slice(0, ALERTS_SHOWN);
  return (
    <div class={"rule " + st}>
      <div class="rule-head">
        <span class={"badge state " + st}>{st}</span>
        {isError(r) && (
          <span class="badge err" title={r.lastError}>
            error
          </span>
        )}
        <b class="rule-name">{r.name}</b>
        <Chips labels={r.labels} />
        <span class="spacer" />
        <span class="muted">
          {r.type === "alerting" && `for ${fmtSeconds(r.duration ?? 0)} · `}
          {r.type === "alerting" && (r.keepFiringFor ?? 0) > 0 && `keep firing ${fmtSeconds(r.keepFiringFor)} · `}
          evaluated <span title={absTime(r.lastEvaluation)}>{ago(r.lastEvaluation, now)}</span>
          {parseTimeOrNever(r.lastEvaluation) !== null && r.evaluationTime !== undefined && ` in ${fmtSeconds(r.evaluationTime)}`}
        </span>
      </div>
      <a class="query" href={buildHash(lang.view, { query: r.query })} title={`open in ${lang.view === "logs" ? "Logs" : "Metrics"}`}>
        <code>{r.query}</code>
      </a>
      {r.lastError && <div class="rule-error">{r.lastError}</div>}
      {r.type === "alerting" && !alerts.length && <Annotations annotations={r.annotations} muted />}
      {alerts.length > 0 && (
        <div class="alerts">
          <div class="muted alerts-head">
            {plural(alerts.length, "active alert")}
            {alerts.length > shown.length && (
              <>
                {" "}
                (showing {shown.length}) <button onClick={() => setAllAlerts(true)}>Show all</button>
              </>
            )}
          </div>
          {shown.map((a) => (
            <AlertItem a={a} now={now} />
          ))}
        </div>
      )}
    </div>
  );
}

function GroupCard({ g, now }: { g: Group; now: number }) {
  const lang = LANGS.find((l) => l.lang === g.lang)!;
  return (
    <div class="card group">
      <div class="group-head">
        <span class="badge lang">{lang.label}</span>
        <b class="group-name">{g.name}</b>
        <span class="muted file" title="file">
          {g.file}
        </span>
        <span class="spacer" />
        <span class="muted">
          every {fmtSeconds(g.interval)}
          {g.limit ? ` · limit ${g.limit}` : ""} · evaluated <span title={absTime(g.lastEvaluation)}>{ago(g.lastEvaluation, now)}</span>
          {parseTimeOrNever(g.lastEvaluation) !== null && g.evaluationTime !== undefined && ` in ${fmtSeconds(g.evaluationTime)}`}
        </span>
      </div>
      {g.rules.length === 0 && <div class="muted">no rules</div>}
      {g.rules.map((r) => (
        <RuleItem key={`${r.name}\n${r.query}\n${JSON.stringify(r.labels ?? {})}`} g={g} r={r} now={now} />
      ))}
    </div>
  );
}

export function Rules({ params, setParams }: ViewProps) {
  const [data, setData] = useState<Record<Lang, Group[] | null>>({ promql: null, logql: null });
  const [errors, setErrors] = useState<string[]>([]);
  const [loaded, setLoaded] = useState(false);
  const [now, setNow] = useState(Date.now());
  const dataRef = useRef(data);
  const inflight = useRef<AbortController | null>(null);
  const q = params.q ?? "";
  const state = (STATE_FILTERS as readonly string[]).includes(params.state) ? params.state : "all";

  // Uses only refs and setters, so any render's copy will do (the interval and the visibility listener).
  const load = async () => {
    if (inflight.current) return;
    const ac = new AbortController();
    inflight.current = ac;
    try {
      const answers = await Promise.allSettled(LANGS.map((l) => api(l.path, { signal: ac.signal })));
      if (ac.signal.aborted) return;
      const next = { ...dataRef.current };
      const errs: string[] = [];
      answers.forEach((a, i) => {
        const l = LANGS[i];
        // A failed list keeps what it showed before, next to the error.
        if (a.status === "fulfilled") next[l.lang] = groupsOf(a.value, l.lang);
        else {
          const e: any = a.reason;
          errs.push(
            e?.status === 401
              ? String(e.message)
              : e?.status === 404
                ? `${l.label} rules: this server has no /${l.path} (an older Lumen?)`
                : `${l.label} rules (/${l.path}): ${String(e?.message ?? e)}`,
          );
        }
      });
      dataRef.current = next;
      setData(next);
      setErrors([...new Set(errs)]);
      setNow(Date.now());
      setLoaded(true);
    } finally {
      if (inflight.current === ac) inflight.current = null;
    }
  };
  useEffect(() => {
    load();
    const f = () => !document.hidden && load();
    document.addEventListener("visibilitychange", f);
    return () => {
      document.removeEventListener("visibilitychange", f);
      inflight.current?.abort();
      inflight.current = null;
    };
  }, []);
  // Every 10 s while the tab is visible; coming back to it refreshes at once (above).
  useInterval(() => !document.hidden && load(), REFRESH_MS);

  const error = errors.length ? errors.join("\n") : null;
  if (!loaded) return <section class="view muted">loading…</section>;
  const all = [...(data.promql ?? []), ...(data.logql ?? [])];
  if (!all.length)
    return (
      <section class="view">
        <ErrorBox error={error} />
        {!error && (
          <p class="muted empty">
            No rules. Add rule files with [ruler] rule_files or loki_rules_dir, or create groups through the config API; see the
            README's Alerting and recording rules.
          </p>
        )}
      </section>
    );
  const sum = summarize(all);
  const shown = filterGroups(all, q, state);
  const shownRules = shown.reduce((n, g) => n + g.rules.length, 0);
  const link = (s: string) => buildHash("rules", { ...params, state: s === "all" ? "" : s });
  const count = (s: string) => (s === "all" ? sum.rules : sum[s as keyof typeof sum]);
  return (
    <section class="view rules">
      <div class="toolbar">
        <input
          class="filter"
          placeholder="filter by rule, group or label value"
          value={q}
          onInput={(e) => setParams({ ...params, q: e.currentTarget.value })}
        />
        <select value={state} onChange={(e) => setParams({ ...params, state: e.currentTarget.value === "all" ? "" : e.currentTarget.value })} title="State">
          {STATE_FILTERS.map((s) => (
            <option value={s}>
              {s} ({count(s)})
            </option>
          ))}
        </select>
        <span class="muted">refreshes every {REFRESH_MS / 1000}s</span>
      </div>
      <ErrorBox error={error} />
      <div class="summary">
        <a class="firing" href={link("firing")}>
          <b>{sum.firing}</b> firing
        </a>{" "}
        ·{" "}
        <a class="pending" href={link("pending")}>
          <b>{sum.pending}</b> pending
        </a>{" "}
        ·{" "}
        <a class="inactive" href={link("inactive")}>
          <b>{sum.inactive}</b> inactive
        </a>{" "}
        ·{" "}
        <a class="recording" href={link("recording")}>
          <b>{sum.recording}</b> recording
        </a>{" "}
        ·{" "}
        <a class="errors" href={link("error")}>
          <b>{sum.error}</b> with errors
        </a>
        <span class="muted">
          {" "}
          — {plural(sum.rules, "rule")} in {plural(sum.groups, "group")}
          {shownRules !== sum.rules && `, ${shownRules} shown`}
        </span>
      </div>
      {shown.map((g) => (
        <GroupCard key={`${g.lang}\n${g.file}\n${g.name}`} g={g} now={now} />
      ))}
      {!shownRules && sum.rules > 0 && <p class="muted empty">No rule matches the filter.</p>}
    </section>
  );
}
