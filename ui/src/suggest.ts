import { api } from "./api";

const cache = new Map<string, Promise<string[]>>();
function cached(path: string): Promise<string[]> {
  let p = cache.get(path);
  if (!p) {
    p = api(path).then((r) => (r.data ?? []) as string[]);
    p.catch(() => cache.delete(path));
    cache.set(path, p);
    setTimeout(() => cache.delete(path), 60_000);
  }
  return p;
}

/**
 * Suggestions inside a selector: label names after "{" or ",", values after `name="`.
 * `prefix` is "loki/api/v1/" or "api/v1/".
 */
export async function labelSuggest(prefix: string, text: string, caret: number) {
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
