// View state in the URL hash: "#/logs?query=...&from=now-1h".

export type Params = Record<string, string>;
export interface Route {
  view: string;
  params: Params;
}

export function parseHash(hash: string): Route {
  let h = hash.startsWith("#") ? hash.slice(1) : hash;
  if (h.startsWith("/")) h = h.slice(1);
  const q = h.indexOf("?");
  const view = (q >= 0 ? h.slice(0, q) : h) || "";
  const params: Params = {};
  if (q >= 0) new URLSearchParams(h.slice(q + 1)).forEach((v, k) => (params[k] = v));
  return { view: decodeURIComponent(view), params };
}

/** Builds "#/view?k=v" with keys sorted and empty values left out, so equal states give equal hashes. */
export function buildHash(view: string, params: Params = {}): string {
  const sp = new URLSearchParams();
  for (const k of Object.keys(params).sort()) {
    const v = params[k];
    if (v !== undefined && v !== null && v !== "") sp.set(k, v);
  }
  const qs = sp.toString().replace(/\+/g, "%20");
  return `#/${encodeURIComponent(view)}${qs ? "?" + qs : ""}`;
}
