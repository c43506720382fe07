//! The ruler: loads every rule source (rule files per tenant, Loki's layout, groups created through the
//! config API), runs one task per group, reloads without losing state, and hands out snapshots for the
//! APIs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use store::model::Tenant;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::RulerConfig;
use crate::group::{Backend, GroupKey, GroupState, Settings};
use crate::notify::{Notifiers, NotifyMetrics, Outgoing};
use crate::rulefmt::{self, Defaults, GroupDesc, GroupSpec, Lang, RuleFile};

type GroupLabel = Vec<(String, String)>;

/// The ruler's own metrics, as Prometheus' `prometheus_rule_*` under `lumen_ruler_*`.
#[derive(Default)]
pub struct RulerMetrics {
    pub evaluations: Family<GroupLabel, Counter>,
    pub failures: Family<GroupLabel, Counter>,
    pub missed: Family<GroupLabel, Counter>,
    pub duration: Family<GroupLabel, Gauge<f64, AtomicU64>>,
    pub last_evaluation: Family<GroupLabel, Gauge<f64, AtomicU64>>,
    pub rules: Family<GroupLabel, Gauge>,
    pub reload_ok: Gauge,
    pub reload_time: Gauge<f64, AtomicU64>,
    pub notify: Arc<NotifyMetrics>,
    pub remote_write: Arc<crate::remote_write::RemoteWriteMetrics>,
}

impl RulerMetrics {
    pub fn register(self: &Arc<Self>, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("lumen_ruler");
        r.register("evaluations", "Rule evaluations (each rule of each cycle)", self.evaluations.clone());
        r.register("evaluation_failures", "Rule evaluations that failed", self.failures.clone());
        r.register(
            "group_iterations_missed",
            "Group cycles skipped because the previous one overran",
            self.missed.clone(),
        );
        r.register("group_last_duration_seconds", "How long the group's last cycle took", self.duration.clone());
        r.register(
            "group_last_evaluation_timestamp_seconds",
            "When the group's last cycle ran",
            self.last_evaluation.clone(),
        );
        r.register("group_rules", "Rules in the group", self.rules.clone());
        r.register(
            "config_last_reload_successful",
            "Whether the last load of the rules succeeded",
            self.reload_ok.clone(),
        );
        r.register(
            "config_last_reload_success_timestamp_seconds",
            "When the rules were last loaded successfully",
            self.reload_time.clone(),
        );
        r.register("notifications_sent", "Alerts delivered, by target (scheme and host)", self.notify.sent.clone());
        r.register("notifications_failed", "Alerts not delivered after retries, by target", self.notify.failed.clone());
        r.register("notifications_dropped", "Alerts dropped on a full queue, by target", self.notify.dropped.clone());
        let rw = &self.remote_write;
        r.register("remote_write_samples_sent", "Rule samples remote-written, by target", rw.sent.clone());
        r.register("remote_write_samples_failed", "Rule samples not remote-written after retries", rw.failed.clone());
        r.register("remote_write_samples_dropped", "Rule samples dropped on a full queue", rw.dropped.clone());
    }
}

struct Running {
    snapshot: Arc<RwLock<Arc<GroupState>>>,
    stop: watch::Sender<bool>,
    /// Taken while a reload stops the group (its last snapshot stays visible to the APIs meanwhile).
    task: Option<JoinHandle<GroupState>>,
}

/// The ruler. Cheap to clone.
#[derive(Clone)]
pub struct Ruler {
    inner: Arc<Inner>,
}

struct Inner {
    config: RulerConfig,
    settings: Settings,
    defaults: Defaults,
    /// `<data>/rules`: groups created through the config API.
    api_dir: PathBuf,
    backend: Arc<dyn Backend>,
    notifiers: Notifiers,
    metrics: Arc<RulerMetrics>,
    groups: Mutex<BTreeMap<GroupKey, Running>>,
    reload: tokio::sync::Mutex<()>,
    last_error: Mutex<Option<String>>,
    /// The runtime group tasks run on (reloads may come from a signal handler).
    runtime: tokio::runtime::Handle,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn group_label(k: &GroupKey) -> GroupLabel {
    vec![("tenant".to_string(), k.tenant.clone()), ("rule_group".to_string(), format!("{};{}", k.file, k.name))]
}

/// The tenant a Loki rule directory stands for (`fake` is single-tenant Loki's).
fn loki_tenant(dir_name: &str) -> Result<Tenant, String> {
    if dir_name == "fake" {
        return Ok(Tenant::default_tenant());
    }
    Tenant::new(dir_name).map_err(|e| e.to_string())
}

/// The file name a config API namespace is kept in: bytes outside `[A-Za-z0-9_.-]` percent-encoded.
pub fn namespace_file(ns: &str) -> String {
    let mut s = String::new();
    for b in ns.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !s.is_empty()) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s + ".yaml"
}

fn namespace_of_file(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".yaml")?;
    let mut out = Vec::new();
    let b = stem.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every rule source, loaded and checked.
type Loaded = Vec<(Tenant, GroupSpec)>;

impl Ruler {
    /// Loads the rules and starts their groups. Fails (with every problem listed) when a rule file does
    /// not load.
    ///
    /// # Errors
    /// Rule files that do not load; notifier URLs that cannot be resolved.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: RulerConfig,
        external_url: String,
        data_dir: &Path,
        backend: Arc<dyn Backend>,
        metrics: Arc<RulerMetrics>,
        client: reqwest::Client,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Ruler, String> {
        let settings = Settings {
            external_labels: config.external_labels.clone(),
            external_url: external_url.clone(),
            resend_delay: config.resend_delay,
            outage_tolerance: config.for_outage_tolerance,
            grace_period: config.for_grace_period,
        };
        let mut targets = Vec::new();
        for u in &config.alertmanager_url {
            let c = crate::config::NotifierConfig {
                kind: crate::config::NotifierKind::Alertmanager,
                url: u.clone(),
                url_file: PathBuf::new(),
                url_env: String::new(),
                bearer_token_file: PathBuf::new(),
                send_resolved: true,
                group_wait: Duration::ZERO,
                group_interval: Duration::ZERO,
                repeat_interval: Duration::ZERO,
            };
            targets.push(crate::notify::Target::resolve(&c)?);
        }
        for c in &config.notifier {
            targets.push(crate::notify::Target::resolve(c)?);
        }
        let backend: Arc<dyn Backend> = if config.remote_write_url.is_empty() {
            backend
        } else {
            for u in &config.remote_write_url {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(format!("ruler.remote_write_url: {} is not an http(s) URL", crate::notify::redact(u)));
                }
            }
            let token = if config.remote_write_bearer_token_file.as_os_str().is_empty() {
                None
            } else {
                let f = &config.remote_write_bearer_token_file;
                let t = std::fs::read_to_string(f)
                    .map_err(|e| format!("ruler.remote_write_bearer_token_file {}: {e}", f.display()))?;
                Some(t.lines().next().unwrap_or("").trim().to_string())
            };
            Arc::new(crate::remote_write::Tee::start(
                backend,
                &config.remote_write_url,
                token,
                client.clone(),
                metrics.remote_write.clone(),
                shutdown.clone(),
            ))
        };
        let notifiers = Notifiers::start(
            targets,
            config.notification_queue_capacity,
            config.external_labels.clone(),
            external_url,
            metrics.notify.clone(),
            client,
            shutdown,
        );
        let defaults = Defaults { interval: config.evaluation_interval, query_offset: config.query_offset };
        let ruler = Ruler {
            inner: Arc::new(Inner {
                settings,
                defaults,
                api_dir: data_dir.join("rules"),
                backend,
                notifiers,
                metrics,
                groups: Mutex::new(BTreeMap::new()),
                reload: tokio::sync::Mutex::new(()),
                last_error: Mutex::new(None),
                runtime: tokio::runtime::Handle::current(),
                config,
            }),
        };
        let loaded = ruler.load().map_err(|e| e.join("\n"))?;
        ruler.apply(loaded, true);
        Ok(ruler)
    }

    /// Checks the configured rule sources without starting anything (`server --check`).
    ///
    /// # Errors
    /// Every problem found, one per line.
    pub fn check_sources(config: &RulerConfig, data_dir: &Path) -> Result<usize, String> {
        let defaults = Defaults { interval: config.evaluation_interval, query_offset: config.query_offset };
        let loaded = load_sources(config, &defaults, &data_dir.join("rules")).map_err(|e| e.join("\n"))?;
        Ok(loaded.iter().map(|(_, g)| g.rules.len()).sum())
    }

    fn load(&self) -> Result<Loaded, Vec<String>> {
        load_sources(&self.inner.config, &self.inner.defaults, &self.inner.api_dir)
    }

    /// Reloads every source (SIGHUP, `POST /-/reload`): with any error the rules in force stay and the
    /// error is returned (and logged).
    ///
    /// # Errors
    /// The problems, one per line.
    pub async fn reload(&self) -> Result<usize, String> {
        let _g = self.inner.reload.lock().await;
        match self.load() {
            Ok(loaded) => {
                let n = loaded.iter().map(|(_, g)| g.rules.len()).sum();
                self.apply_async(loaded).await;
                *self.inner.last_error.lock() = None;
                self.inner.metrics.reload_ok.set(1);
                self.inner.metrics.reload_time.set(now_ms() as f64 / 1000.0);
                tracing::info!(rules = n, "rules reloaded");
                Ok(n)
            }
            Err(e) => {
                let msg = e.join("\n");
                tracing::error!(error = %msg, "reloading the rules failed; the rules in force stay");
                self.inner.metrics.reload_ok.set(0);
                *self.inner.last_error.lock() = Some(msg.clone());
                Err(msg)
            }
        }
    }

    /// Starts the loaded groups (at start).
    fn apply(&self, loaded: Loaded, at_start: bool) {
        let mut groups = self.inner.groups.lock();
        for (tenant, spec) in loaded {
            let mut state = GroupState::new(tenant, spec);
            if !at_start {
                state.should_restore = false;
                for r in &mut state.rules {
                    r.restored = true;
                }
            }
            let key = state.key();
            let running = self.spawn(state);
            groups.insert(key, running);
        }
        self.inner.metrics.reload_ok.set(1);
        self.inner.metrics.reload_time.set(now_ms() as f64 / 1000.0);
    }

    /// Replaces the running groups: the same group keeps its state, removed ones mark their series stale.
    async fn apply_async(&self, loaded: Loaded) {
        // Stop every group; the APIs keep answering from their last snapshots until the new ones start.
        let tasks: Vec<(GroupKey, JoinHandle<GroupState>)> = {
            let mut groups = self.inner.groups.lock();
            groups
                .iter_mut()
                .filter_map(|(k, r)| {
                    let _ = r.stop.send(true);
                    r.task.take().map(|t| (k.clone(), t))
                })
                .collect()
        };
        let mut stopped: BTreeMap<GroupKey, GroupState> = BTreeMap::new();
        for (k, task) in tasks {
            match task.await {
                Ok(state) => {
                    stopped.insert(k, state);
                }
                Err(e) => tracing::error!(group = %k.name, error = %e, "a rule group's task failed"),
            }
        }
        let mut stale: Vec<(Tenant, Vec<crate::rule::Labels>)> = Vec::new();
        let mut new_groups = BTreeMap::new();
        for (tenant, spec) in loaded {
            let mut state = GroupState::new(tenant, spec);
            for r in &mut state.rules {
                r.restored = true;
            }
            state.should_restore = false;
            let key = state.key();
            if let Some(old) = stopped.remove(&key) {
                let tenant = old.tenant.clone();
                let gone = state.take_state(old);
                if !gone.is_empty() {
                    stale.push((tenant, gone));
                }
            }
            new_groups.insert(key, state);
        }
        for (_, mut g) in stopped {
            stale.push((g.tenant.clone(), g.all_series()));
            g.rules.clear();
        }
        let backend = self.inner.backend.clone();
        let ts = now_ms();
        let _ = tokio::task::spawn_blocking(move || {
            for (tenant, series) in stale {
                if series.is_empty() {
                    continue;
                }
                let samples = series.into_iter().map(|l| (l, crate::group::STALE_NAN)).collect();
                if let Err(e) = backend.write(&tenant, ts, samples) {
                    tracing::warn!(error = %e, "writing stale markers for removed rules failed");
                }
            }
        })
        .await;
        let started: BTreeMap<GroupKey, Running> =
            new_groups.into_iter().map(|(k, state)| (k, self.spawn(state))).collect();
        *self.inner.groups.lock() = started;
    }

    fn spawn(&self, state: GroupState) -> Running {
        let snapshot = Arc::new(RwLock::new(Arc::new(state.clone())));
        let (stop, stop_rx) = watch::channel(false);
        let task = self.inner.runtime.spawn(run_group(self.inner.clone(), state, snapshot.clone(), stop_rx));
        Running { snapshot, stop, task: Some(task) }
    }

    /// Snapshots of every group of `tenant` in `lang`, ordered by file and name.
    pub fn groups(&self, tenant: &Tenant, lang: Lang) -> Vec<Arc<GroupState>> {
        let groups = self.inner.groups.lock();
        groups
            .iter()
            .filter(|(k, _)| k.tenant == tenant.as_str() && k.lang == lang)
            .map(|(_, r)| r.snapshot.read().clone())
            .collect()
    }

    /// The error of the last reload, when it failed.
    pub fn last_error(&self) -> Option<String> {
        self.inner.last_error.lock().clone()
    }

    /// Waits, at most `limit`, for the notifiers to send what they hold once the ruler's shutdown signal
    /// fired (call after [`Ruler::stop`] and that signal).
    pub async fn notifiers_stopped(&self, limit: std::time::Duration) {
        self.inner.notifiers.stopped(limit).await;
    }

    /// Stops every group (at shutdown).
    pub async fn stop(&self) {
        let old: BTreeMap<GroupKey, Running> = std::mem::take(&mut *self.inner.groups.lock());
        for (_, r) in old {
            let _ = r.stop.send(true);
            if let Some(t) = r.task {
                let _ = t.await;
            }
        }
    }

    // ----- groups kept by the config API -----

    fn ns_path(&self, tenant: &Tenant, lang: Lang, ns: &str) -> PathBuf {
        self.inner.api_dir.join(lang.as_str()).join(tenant.as_str()).join(namespace_file(ns))
    }

    /// The namespaces and groups `tenant` created through the config API in `lang`.
    pub fn api_groups(&self, tenant: &Tenant, lang: Lang) -> BTreeMap<String, Vec<GroupDesc>> {
        let dir = self.inner.api_dir.join(lang.as_str()).join(tenant.as_str());
        let mut out = BTreeMap::new();
        let Ok(rd) = std::fs::read_dir(&dir) else { return out };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(ns) = namespace_of_file(&name) else { continue };
            if let Ok(text) = std::fs::read_to_string(e.path())
                && let Ok(f) = serde_yaml_ng::from_str::<RuleFile>(&text)
                && !f.groups.is_empty()
            {
                out.insert(ns, f.groups);
            }
        }
        out
    }

    /// Creates or replaces a group of namespace `ns` (checked first), then reloads.
    ///
    /// # Errors
    /// `Err((400, message))` for a group that does not check or is over a limit; `(500, ..)` for a
    /// file that cannot be written.
    pub async fn put_group(&self, tenant: &Tenant, lang: Lang, ns: &str, g: GroupDesc) -> Result<(), (u16, String)> {
        let c = &self.inner.config;
        if g.rules.len() > c.max_rules_per_rule_group {
            return Err((
                400,
                format!(
                    "per-user rules per rule group limit (limit: {}) exceeded: the group has {} rules (ruler.max_rules_per_rule_group)",
                    c.max_rules_per_rule_group,
                    g.rules.len()
                ),
            ));
        }
        rulefmt::check_group(ns, g.clone(), lang, &self.inner.defaults, None)
            .map_err(|e| (400, e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
        let _guard = self.inner.reload.lock().await;
        let mut all = self.api_groups(tenant, lang);
        // A group of a rule file (Loki's directory, rule_files) with this namespace and name: two groups
        // with one identity would hide each other.
        let in_api = all.get(ns).is_some_and(|gs| gs.iter().any(|x| x.name == g.name));
        if !in_api && self.groups(tenant, lang).iter().any(|x| x.spec.file == ns && x.spec.name == g.name) {
            return Err((
                400,
                format!(
                    "group {:?} of namespace {ns:?} comes from a rule file, which the config API does not change: \
                     edit the file (and reload), or use another namespace",
                    g.name
                ),
            ));
        }
        let total: usize = all.values().map(Vec::len).sum();
        let groups = all.entry(ns.to_string()).or_default();
        match groups.iter_mut().find(|x| x.name == g.name) {
            Some(x) => *x = g,
            None => {
                if total + 1 > c.max_rule_groups_per_tenant {
                    return Err((
                        400,
                        format!(
                            "per-user rule groups limit (limit: {}) exceeded (ruler.max_rule_groups_per_tenant)",
                            c.max_rule_groups_per_tenant
                        ),
                    ));
                }
                groups.push(g);
            }
        }
        let groups = groups.clone();
        self.write_ns(tenant, lang, ns, groups).map_err(|e| (500, e))?;
        drop(_guard);
        self.reload().await.map(|_| ()).map_err(|e| (500, e))
    }

    /// Deletes one group (`Some(name)`) or the whole namespace, then reloads. `Ok(false)` when there was
    /// nothing to delete.
    ///
    /// # Errors
    /// A file that cannot be written, or a reload that fails.
    pub async fn delete_group(
        &self,
        tenant: &Tenant,
        lang: Lang,
        ns: &str,
        group: Option<&str>,
    ) -> Result<bool, String> {
        let _guard = self.inner.reload.lock().await;
        let all = self.api_groups(tenant, lang);
        let Some(groups) = all.get(ns) else { return Ok(false) };
        let rest: Vec<GroupDesc> = match group {
            Some(name) => {
                if !groups.iter().any(|g| g.name == name) {
                    return Ok(false);
                }
                groups.iter().filter(|g| g.name != name).cloned().collect()
            }
            None => Vec::new(),
        };
        self.write_ns(tenant, lang, ns, rest)?;
        drop(_guard);
        self.reload().await.map(|_| true)
    }

    fn write_ns(&self, tenant: &Tenant, lang: Lang, ns: &str, groups: Vec<GroupDesc>) -> Result<(), String> {
        let path = self.ns_path(tenant, lang, ns);
        if groups.is_empty() {
            return match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(format!("deleting {}: {e}", path.display())),
            };
        }
        let dir = path.parent().expect("namespace file has a directory");
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let text = serde_yaml_ng::to_string(&RuleFile { groups }).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("yaml.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// Loads every source; all problems are collected.
fn load_sources(config: &RulerConfig, defaults: &Defaults, api_dir: &Path) -> Result<Loaded, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let load =
        |tenant: &Tenant, path: &Path, file_name: String, lang: Lang, out: &mut Loaded, errors: &mut Vec<String>| {
            match std::fs::read_to_string(path) {
                Err(e) => errors.push(format!("{}: {e}", path.display())),
                Ok(text) => match rulefmt::parse_file(&file_name, &text, lang, defaults) {
                    Ok(gs) => out.extend(gs.into_iter().map(|g| (tenant.clone(), g))),
                    Err(es) => errors.extend(es.iter().map(ToString::to_string)),
                },
            }
        };
    let mut file_sets: Vec<(Tenant, &Vec<String>)> = Vec::new();
    if !config.rule_files.is_empty() {
        file_sets.push((Tenant::default_tenant(), &config.rule_files));
    }
    for (t, globs) in &config.tenant_rule_files {
        match Tenant::new(t) {
            Ok(t) => file_sets.push((t, globs)),
            Err(e) => return Err(vec![format!("ruler.tenant_rule_files: {e}")]),
        }
    }
    for (tenant, globs) in file_sets {
        for pattern in globs {
            let paths = match glob::glob(pattern) {
                Ok(p) => p,
                Err(e) => {
                    return Err(vec![format!("ruler rule_files: {pattern:?} is not a valid glob: {e}")]);
                }
            };
            let mut paths: Vec<PathBuf> = paths.flatten().filter(|p| p.is_file()).collect();
            paths.sort();
            for p in paths {
                let name = p.display().to_string();
                load(&tenant, &p, name, Lang::PromQL, &mut out, &mut errors);
            }
        }
    }
    let mut dirs: Vec<(PathBuf, Lang, bool)> = Vec::new();
    if !config.loki_rules_dir.as_os_str().is_empty() {
        dirs.push((config.loki_rules_dir.clone(), Lang::LogQL, false));
    }
    dirs.push((api_dir.join("logql"), Lang::LogQL, true));
    dirs.push((api_dir.join("promql"), Lang::PromQL, true));
    for (dir, lang, api) in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            if !api {
                errors.push(format!("ruler.loki_rules_dir {}: cannot be read", dir.display()));
            }
            continue;
        };
        let mut tenants: Vec<_> = rd.flatten().filter(|e| e.path().is_dir()).collect();
        tenants.sort_by_key(|e| e.file_name());
        for t in tenants {
            let tname = t.file_name().to_string_lossy().to_string();
            let tenant = match if api { Tenant::new(&tname).map_err(|e| e.to_string()) } else { loki_tenant(&tname) } {
                Ok(t) => t,
                Err(e) => {
                    errors.push(format!("{}: {e}", t.path().display()));
                    continue;
                }
            };
            let Ok(files) = std::fs::read_dir(t.path()) else { continue };
            let mut files: Vec<PathBuf> = files
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            files.sort();
            for f in files {
                let fname = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let name = if api { namespace_of_file(&fname).unwrap_or(fname) } else { fname };
                load(&tenant, &f, name, lang, &mut out, &mut errors);
            }
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

async fn run_group(
    inner: Arc<Inner>,
    mut state: GroupState,
    snapshot: Arc<RwLock<Arc<GroupState>>>,
    mut stop: watch::Receiver<bool>,
) -> GroupState {
    let interval = (state.spec.interval.as_millis() as i64).max(1);
    let key = state.key();
    let label = group_label(&key);
    inner.metrics.rules.get_or_create(&label).set(state.rules.len() as i64);
    let mut next = state.eval_timestamp(now_ms()) + interval;
    loop {
        let wait = Duration::from_millis((next - now_ms()).max(0) as u64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return state,
        }
        let now = now_ms();
        let missed = (now - next) / interval;
        if missed > 0 {
            inner.metrics.missed.get_or_create(&label).inc_by(missed as u64);
            next += missed * interval;
        }
        let ts = next;
        let inner2 = inner.clone();
        let res = tokio::task::spawn_blocking(move || {
            let report = state.eval(ts, &*inner2.backend, &inner2.settings, now_ms());
            if state.should_restore && state.evaluations >= 2 {
                state.restore(now_ms(), &*inner2.backend, &inner2.settings);
            }
            (state, report)
        })
        .await;
        let (s, report) = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(group = %key.name, error = %e, "a rule group's evaluation panicked; the group stops");
                return GroupState::new(
                    Tenant::new(&key.tenant).unwrap_or_else(|_| Tenant::default_tenant()),
                    snapshot.read().spec.clone(),
                );
            }
        };
        state = s;
        inner.metrics.evaluations.get_or_create(&label).inc_by(report.rules as u64);
        inner.metrics.failures.get_or_create(&label).inc_by(report.failures as u64);
        inner.metrics.duration.get_or_create(&label).set(state.eval_duration.as_secs_f64());
        inner.metrics.last_evaluation.get_or_create(&label).set(now as f64 / 1000.0);
        if !report.alerts.is_empty() {
            let tenant = state.tenant.as_str().to_string();
            let label = &inner.config.tenant_label;
            inner.notifiers.send(
                report
                    .alerts
                    .into_iter()
                    .map(|mut a| {
                        if !label.is_empty() && !a.labels.iter().any(|(k, _)| k == label) {
                            a.labels.push((label.clone(), tenant.clone()));
                            a.labels.sort();
                        }
                        Outgoing { tenant: tenant.clone(), alert: a }
                    })
                    .collect(),
            );
        }
        *snapshot.write() = Arc::new(state.clone());
        next += interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_files_round_trip_and_never_escape_the_directory() {
        for ns in ["team-a", "a/b", "..", ".hidden", "ünï cödé", "x.y"] {
            let f = namespace_file(ns);
            assert!(!f.contains('/') && !f.starts_with('.'), "{f}");
            assert_eq!(namespace_of_file(&f).as_deref(), Some(ns));
        }
    }
}
