// Talking to Lumen: relative URLs (the UI lives at <prefix>/ui/), auth on 401, errors as Error.

export interface Auth {
  tenant: string;
  token: string;
}

const AUTH_KEY = "lumen.auth";
const TENANT_KEY = "lumen.tenant";

export function getAuth(): Auth | null {
  try {
    const v = sessionStorage.getItem(AUTH_KEY);
    return v ? (JSON.parse(v) as Auth) : null;
  } catch {
    return null;
  }
}

export function setAuth(a: Auth | null) {
  if (a) sessionStorage.setItem(AUTH_KEY, JSON.stringify(a));
  else sessionStorage.removeItem(AUTH_KEY);
}

export function getTenant(): string {
  return getAuth()?.tenant || sessionStorage.getItem(TENANT_KEY) || "";
}

export function setTenant(t: string) {
  if (t) sessionStorage.setItem(TENANT_KEY, t);
  else sessionStorage.removeItem(TENANT_KEY);
  const a = getAuth();
  if (a && t) setAuth({ ...a, tenant: t });
}

type Listener = () => void;
const authListeners = new Set<Listener>();
/** Called when a request answered 401 (the app shows the sign-in form). */
export function onUnauthorized(l: Listener): () => void {
  authListeners.add(l);
  return () => authListeners.delete(l);
}

export class ApiError extends Error {
  status: number;
  constructor(message: string, status: number) {
    super(message);
    this.status = status;
  }
}

/** Base URL of Lumen's APIs: the parent of the UI's directory. */
export function apiBase(href: string = location.href): string {
  const here = new URL(".", href);
  // The UI is served from <prefix>/ui/; in Vite's dev server it is served from "/".
  return here.pathname.endsWith("/ui/") ? new URL("..", here).href : here.href;
}

export function apiUrl(path: string, params?: Record<string, string | number | undefined>, href?: string): string {
  const u = new URL(path.replace(/^\//, ""), apiBase(href));
  if (params) for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") u.searchParams.set(k, String(v));
  return u.href;
}

export function wsUrl(path: string, params?: Record<string, string | number | undefined>, href?: string): string {
  return apiUrl(path, params, href).replace(/^http/, "ws");
}

/** Base64url of a string's UTF-8 bytes, without padding (`=` may not appear in a WebSocket subprotocol). */
export function base64url(s: string): string {
  return btoa(unescape(encodeURIComponent(s))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The subprotocol the server answers a WebSocket that carries its credential with. */
export const WS_CREDENTIAL_PROTOCOL = "lumen.bearer";

/**
 * The subprotocols that carry the signed-in tenant and token on a WebSocket (a browser cannot put an
 * Authorization header on one): `lumen.bearer`, which the server echoes, and the basic credentials as
 * `base64url.basic.authorization.lumen.<base64url(tenant:token)>`. Undefined when not signed in.
 */
export function wsProtocols(a: Auth | null = getAuth()): string[] | undefined {
  if (!a) return undefined;
  return [WS_CREDENTIAL_PROTOCOL, "base64url.basic.authorization.lumen." + base64url(`${a.tenant}:${a.token}`)];
}

function headers(extra?: Record<string, string>): Record<string, string> {
  // X-Lumen-UI asks the server to answer 401 without a `WWW-Authenticate: Basic` challenge, which would make
  // the browser show its own login dialog instead of ours.
  const h: Record<string, string> = { "X-Lumen-UI": "1", ...extra };
  const a = getAuth();
  const tenant = getTenant();
  if (a) h["Authorization"] = "Basic " + btoa(unescape(encodeURIComponent(`${a.tenant}:${a.token}`)));
  if (tenant) h["X-Scope-OrgID"] = tenant;
  return h;
}

export async function api<T = any>(
  path: string,
  opts: {
    params?: Record<string, string | number | undefined>;
    method?: string;
    body?: string;
    signal?: AbortSignal;
    contentType?: string;
    headers?: Record<string, string>;
  } = {},
): Promise<T> {
  const res = await fetch(apiUrl(path, opts.params), {
    method: opts.method ?? "GET",
    body: opts.body,
    signal: opts.signal,
    headers: headers({ ...opts.headers, ...(opts.body !== undefined ? { "Content-Type": opts.contentType ?? "text/plain" } : undefined) }),
  });
  const text = await res.text();
  let json: any = undefined;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    /* not JSON */
  }
  if (res.status === 401) {
    authListeners.forEach((l) => l());
    throw new ApiError("unauthorized: sign in with a tenant and a token", 401);
  }
  if (!res.ok || (json && json.status === "error")) {
    const msg = (json && (json.error || json.message)) || text.trim() || res.statusText;
    throw new ApiError(`${res.status} ${msg}`, res.status);
  }
  return json as T;
}

// Prometheus/Loki answer shapes.
export interface Series {
  metric: Record<string, string>;
  values?: [number, string][];
  value?: [number, string];
}
export interface Stream {
  stream: Record<string, string>;
  /** [ns, line], plus the entry's structured metadata and parsed fields when labels are categorized. */
  values: ([string, string] | [string, string, { structuredMetadata?: Record<string, string>; parsed?: Record<string, string> }])[];
}

/** Asks Loki's API to keep stream labels, structured metadata and parsed fields apart. */
export const CATEGORIZE = { "X-Loki-Response-Encoding-Flags": "categorize-labels" };
