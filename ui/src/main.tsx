import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import "./style.css";
import { buildHash, parseHash, type Params, type Route } from "./hash";
import { getAuth, getTenant, onUnauthorized, setAuth, setTenant } from "./api";
import { useTimeZone } from "./components";
import { Logs } from "./views/Logs";
import { Metrics } from "./views/Metrics";
import { Rules } from "./views/Rules";
import { Sql } from "./views/Sql";
import { Devices } from "./views/Devices";
import { Status } from "./views/Status";

const VIEWS: [string, string][] = [
  ["logs", "Logs"],
  ["metrics", "Metrics"],
  ["rules", "Rules"],
  ["sql", "SQL"],
  ["devices", "Devices"],
  ["status", "Status"],
];

export interface ViewProps {
  params: Params;
  /** Changes this view's state in the URL; `push` adds a history entry (a run), otherwise it replaces. */
  setParams: (p: Params, push?: boolean) => void;
  navigate: (view: string, p: Params) => void;
}

function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(location.hash));
  useEffect(() => {
    const f = () => setRoute(parseHash(location.hash));
    addEventListener("hashchange", f);
    return () => removeEventListener("hashchange", f);
  }, []);
  return route;
}

function setHash(h: string, push: boolean) {
  if (location.hash === h) return;
  if (push) location.hash = h;
  else {
    history.replaceState(null, "", h);
    dispatchEvent(new HashChangeEvent("hashchange"));
  }
}

const lastParams: Record<string, Params> = (() => {
  try {
    return JSON.parse(sessionStorage.getItem("lumen.views") || "{}");
  } catch {
    return {};
  }
})();

function applyTheme(t: string | null) {
  const dark = t ? t === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  const next = dark ? "dark" : "light";
  if (document.documentElement.dataset.theme !== next) {
    document.documentElement.dataset.theme = next;
    dispatchEvent(new Event("lumen-theme"));
  }
}

function AuthForm({ onDone }: { onDone: () => void }) {
  const [tenant, setT] = useState(getAuth()?.tenant || getTenant() || "default");
  const [token, setToken] = useState("");
  return (
    <div class="modal">
      <form
        class="card"
        onSubmit={(e) => {
          e.preventDefault();
          setAuth({ tenant: tenant || "default", token });
          onDone();
        }}
      >
        <h2>Sign in to Lumen</h2>
        <p class="muted">The server asks for a token. It is kept in this tab only (sessionStorage).</p>
        <label>
          Tenant <input name="tenant" value={tenant} onInput={(e) => setT(e.currentTarget.value)} />
        </label>
        <label>
          Token <input name="token" type="password" value={token} autoFocus onInput={(e) => setToken(e.currentTarget.value)} />
        </label>
        <div class="row">
          <button class="primary" type="submit">
            Sign in
          </button>
          <button type="button" onClick={onDone}>
            Cancel
          </button>
        </div>
      </form>
    </div>
  );
}

function App() {
  const route = useRoute();
  const view = VIEWS.some(([v]) => v === route.view) ? route.view : "logs";
  const [theme, setTheme] = useState<string | null>(() => localStorage.getItem("lumen.theme"));
  const [needAuth, setNeedAuth] = useState(false);
  const [tenant, setTenantState] = useState(getTenant());
  const [epoch, setEpoch] = useState(0); // bumped after sign-in / tenant change to re-run views
  const [menu, setMenu] = useState(false);
  useTimeZone(); // a new time zone re-renders every view's times

  useEffect(() => {
    applyTheme(theme);
    const mq = matchMedia("(prefers-color-scheme: dark)");
    const f = () => applyTheme(theme);
    mq.addEventListener("change", f);
    return () => mq.removeEventListener("change", f);
  }, [theme]);
  useEffect(() => onUnauthorized(() => setNeedAuth(true)), []);
  useEffect(() => {
    const f = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement;
      if (e.key === "/" && !/^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName) && !t.isContentEditable) {
        const box = document.querySelector<HTMLTextAreaElement>("[data-querybox]");
        if (box) {
          e.preventDefault();
          box.focus();
        }
      }
    };
    addEventListener("keydown", f);
    return () => removeEventListener("keydown", f);
  }, []);

  useEffect(() => {
    lastParams[view] = route.params;
    try {
      sessionStorage.setItem("lumen.views", JSON.stringify(lastParams));
    } catch {
      /* ignore */
    }
  }, [view, route.params]);

  const props: ViewProps = {
    params: route.params,
    setParams: (p, push) => setHash(buildHash(view, p), !!push),
    navigate: (v, p) => setHash(buildHash(v, p), true),
  };
  const toggleTheme = () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem("lumen.theme", next);
    setTheme(next);
  };
  return (
    <>
      <header>
        <a class="brand" href="#/logs">
          ◐ Lumen
        </a>
        <button class="menu" onClick={() => setMenu(!menu)} aria-label="Menu">
          ☰
        </button>
        <nav class={menu ? "open" : ""}>
          {VIEWS.map(([v, name]) => (
            <a href={buildHash(v, v === view ? route.params : lastParams[v])} class={v === view ? "active" : ""} onClick={() => setMenu(false)}>
              {name}
            </a>
          ))}
        </nav>
        <span class="spacer" />
        <input
          class="tenant"
          title="Tenant (X-Scope-OrgID)"
          placeholder="tenant"
          value={tenant}
          onChange={(e) => {
            const t = e.currentTarget.value.trim();
            setTenant(t);
            setTenantState(t);
            setEpoch(epoch + 1);
          }}
        />
        {getAuth() && (
          <button
            title="Sign out"
            onClick={() => {
              setAuth(null);
              setEpoch(epoch + 1);
            }}
          >
            ⏏
          </button>
        )}
        <button onClick={toggleTheme} title="Toggle dark/light theme" aria-label="Toggle theme">
          ☀︎/☾
        </button>
      </header>
      <main key={`${view}:${epoch}`}>
        {view === "logs" && <Logs {...props} />}
        {view === "metrics" && <Metrics {...props} />}
        {view === "rules" && <Rules {...props} />}
        {view === "sql" && <Sql {...props} />}
        {view === "devices" && <Devices {...props} />}
        {view === "status" && <Status {...props} />}
      </main>
      {needAuth && (
        <AuthForm
          onDone={() => {
            setNeedAuth(false);
            setTenantState(getTenant());
            setEpoch((n) => n + 1);
          }}
        />
      )}
    </>
  );
}

render(<App />, document.getElementById("app")!);
