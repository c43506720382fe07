// LogQL helpers: find the stream selector of a query, read and change its matchers.

export type Op = "=" | "!=" | "=~" | "!~";
export interface Matcher {
  name: string;
  op: Op;
  value: string;
}

/** Escapes a value for a double-quoted LogQL/PromQL string. */
export function quote(value: string): string {
  return (
    '"' +
    value
      .replace(/\\/g, "\\\\")
      .replace(/"/g, '\\"')
      .replace(/\n/g, "\\n")
      .replace(/\r/g, "\\r")
      .replace(/\t/g, "\\t") +
    '"'
  );
}

/** Index just past a string literal starting at i (", ' or `), or the end of input. */
function skipString(s: string, i: number): number {
  const q = s[i];
  let j = i + 1;
  while (j < s.length) {
    if (s[j] === "\\" && q !== "`") {
      j += 2;
      continue;
    }
    if (s[j] === q) return j + 1;
    j++;
  }
  return j;
}

/** Start (index of "{") and end (index just past "}") of the first stream selector, or null. */
export function findSelector(query: string): { start: number; end: number } | null {
  let i = 0;
  while (i < query.length) {
    const c = query[i];
    if (c === '"' || c === "`" || c === "'") {
      i = skipString(query, i);
      continue;
    }
    if (c === "{") {
      let j = i + 1;
      while (j < query.length) {
        const d = query[j];
        if (d === '"' || d === "`" || d === "'") {
          j = skipString(query, j);
          continue;
        }
        if (d === "}") return { start: i, end: j + 1 };
        j++;
      }
      return null;
    }
    i++;
  }
  return null;
}

function unquote(lit: string): string {
  if (lit.startsWith("`")) return lit.slice(1, -1);
  let out = "";
  for (let i = 1; i < lit.length - 1; i++) {
    const c = lit[i];
    if (c === "\\" && i + 1 < lit.length - 1) {
      const n = lit[++i];
      out += n === "n" ? "\n" : n === "t" ? "\t" : n === "r" ? "\r" : n;
    } else out += c;
  }
  return out;
}

/** Parses the inside of `{...}` (with or without the braces). Returns null when it is not a selector. */
export function parseMatchers(selector: string): Matcher[] | null {
  let s = selector.trim();
  if (s.startsWith("{")) s = s.slice(1);
  if (s.endsWith("}")) s = s.slice(0, -1);
  const out: Matcher[] = [];
  const re = /\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|`[^`]*`)\s*(,|$)/y;
  let pos = 0;
  while (pos < s.length) {
    if (/^\s*$/.test(s.slice(pos))) break;
    re.lastIndex = pos;
    const m = re.exec(s);
    if (!m) return null;
    out.push({ name: m[1], op: m[2] as Op, value: unquote(m[3]) });
    pos = re.lastIndex;
    if (m[4] === "") break;
  }
  return out;
}

export function formatSelector(ms: Matcher[]): string {
  return "{" + ms.map((m) => `${m.name}${m.op}${quote(m.value)}`).join(", ") + "}";
}

function withMatchers(query: string, f: (ms: Matcher[]) => Matcher[]): string {
  const sel = findSelector(query);
  if (!sel) {
    if (query.includes("{")) return query;
    const ms = f([]);
    const rest = query.trim();
    return ms.length ? formatSelector(ms) + (rest ? " " + rest : "") : query;
  }
  const ms = parseMatchers(query.slice(sel.start, sel.end));
  if (!ms) return query;
  const next = f(ms);
  return query.slice(0, sel.start) + formatSelector(next) + query.slice(sel.end);
}

/**
 * Adds `name op "value"` to the query's selector. For `=` it replaces any other `=`/`!=` matcher on the
 * same name with that value (so "include" after "exclude" flips it); an identical matcher is not added twice.
 */
export function addMatcher(query: string, name: string, op: Op, value: string): string {
  return withMatchers(query, (ms) => {
    let next = ms.filter((m) => !(m.name === name && m.value === value && (m.op === "=" || m.op === "!=")));
    if (op === "=") next = next.filter((m) => !(m.name === name && m.op === "="));
    next.push({ name, op, value });
    return next;
  });
}

/** Removes matchers on `name` (only those with op/value when given). */
export function removeMatcher(query: string, name: string, op?: Op, value?: string): string {
  return withMatchers(query, (ms) =>
    ms.filter((m) => !(m.name === name && (op === undefined || m.op === op) && (value === undefined || m.value === value))),
  );
}

/** A log query starts with its selector; a metric query (count_over_time(...), sum(...)) does not. */
export function isLogQuery(query: string): boolean {
  return query.trim().startsWith("{");
}

/** The query for the hits histogram of a log query. */
export function histogramQuery(query: string, stepSeconds: number, byLevel = true): string {
  const inner = `count_over_time(${query.trim()} [${stepSeconds}s])`;
  return byLevel ? `sum by (detected_level) (${inner})` : `sum(${inner})`;
}
