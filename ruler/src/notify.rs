//! Notifications: Alertmanager's API v2 (`POST /api/v2/alerts`, as Prometheus sends), and, for teams with
//! no Alertmanager, a webhook in Alertmanager's webhook payload (version 4: ntfy's `alertmanager`
//! template, chat bridges, scripts) and Slack-style JSON (Slack, Mattermost, Rocket.Chat, Discord's
//! `/slack` endpoint), grouped by alert name with Alertmanager's group wait, group interval and repeat
//! interval. Every target has a bounded queue; URLs may hold secrets, so logs show only scheme and host.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::config::{NotifierConfig, NotifierKind};
use crate::rule::{Labels, OutAlert};

/// Notification counters, by target (`scheme://host`).
#[derive(Default)]
pub struct NotifyMetrics {
    pub sent: Family<Vec<(String, String)>, Counter>,
    pub failed: Family<Vec<(String, String)>, Counter>,
    pub dropped: Family<Vec<(String, String)>, Counter>,
}

/// One alert on its way, with its tenant.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub tenant: String,
    pub alert: OutAlert,
}

/// The notification targets. Cheap to clone.
#[derive(Clone, Default)]
pub struct Notifiers {
    targets: Arc<Vec<(String, mpsc::Sender<Vec<Outgoing>>)>>,
    metrics: Arc<NotifyMetrics>,
    /// The targets' tasks, taken by [`Notifiers::stopped`].
    tasks: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// A resolved target: the URL (a secret), the name logs and metrics use.
#[derive(Clone)]
pub struct Target {
    pub kind: NotifierKind,
    pub url: String,
    pub name: String,
    pub bearer_token: Option<String>,
    pub send_resolved: bool,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Target({:?}, {})", self.kind, self.name)
    }
}

/// `scheme://host[:port]` of a URL: what may be logged of it.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    format!("{scheme}://{host}")
}

impl Target {
    /// Resolves a configured target: the URL from `url`, `url_file` or `url_env`, the token from its file.
    ///
    /// # Errors
    /// No URL, an unreadable file, a missing variable, a URL that is not http(s).
    pub fn resolve(c: &NotifierConfig) -> Result<Target, String> {
        let url = if !c.url.is_empty() {
            c.url.clone()
        } else if !c.url_file.as_os_str().is_empty() {
            std::fs::read_to_string(&c.url_file)
                .map_err(|e| format!("ruler.notifier url_file {}: {e}", c.url_file.display()))?
                .trim()
                .to_string()
        } else if !c.url_env.is_empty() {
            std::env::var(&c.url_env).map_err(|_| format!("ruler.notifier url_env: {} is not set", c.url_env))?
        } else {
            return Err("a [[ruler.notifier]] needs url, url_file or url_env".to_string());
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("ruler.notifier: {} is not an http(s) URL", redact(&url)));
        }
        let bearer_token = if c.bearer_token_file.as_os_str().is_empty() {
            None
        } else {
            let t = std::fs::read_to_string(&c.bearer_token_file)
                .map_err(|e| format!("ruler.notifier bearer_token_file {}: {e}", c.bearer_token_file.display()))?;
            Some(t.lines().next().unwrap_or("").trim().to_string())
        };
        let url = match c.kind {
            NotifierKind::Alertmanager if !url.trim_end_matches('/').ends_with("/api/v2/alerts") => {
                format!("{}/api/v2/alerts", url.trim_end_matches('/'))
            }
            _ => url,
        };
        Ok(Target {
            kind: c.kind,
            name: redact(&url),
            url,
            bearer_token,
            send_resolved: c.send_resolved,
            group_wait: c.group_wait,
            group_interval: c.group_interval,
            repeat_interval: c.repeat_interval,
        })
    }
}

impl Notifiers {
    /// Starts one task per target; each ends when `shutdown` fires (after one last send of what it holds).
    pub fn start(
        targets: Vec<Target>,
        capacity: usize,
        external_labels: BTreeMap<String, String>,
        external_url: String,
        metrics: Arc<NotifyMetrics>,
        client: reqwest::Client,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Notifiers {
        let mut out = Vec::new();
        let mut tasks = Vec::new();
        for t in targets {
            let (tx, rx) = mpsc::channel(capacity.max(1) / 16 + 1);
            let name = t.name.clone();
            let ctx = SendCtx {
                target: t,
                client: client.clone(),
                metrics: metrics.clone(),
                external_labels: external_labels.clone(),
                external_url: external_url.clone(),
            };
            tasks.push(tokio::spawn(run(ctx, rx, shutdown.clone())));
            out.push((name, tx));
        }
        Notifiers { targets: Arc::new(out), metrics, tasks: Arc::new(parking_lot::Mutex::new(tasks)) }
    }

    /// Waits, at most `limit`, for the targets' tasks to end after `shutdown` fired: they send what they
    /// hold once (each send gives up after its attempts).
    pub async fn stopped(&self, limit: Duration) {
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(?limit, "notifications still being sent at shutdown were abandoned");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Queues alerts for every target; a full queue drops them (counted, logged).
    pub fn send(&self, alerts: Vec<Outgoing>) {
        if alerts.is_empty() {
            return;
        }
        for (name, tx) in self.targets.iter() {
            if tx.try_send(alerts.clone()).is_err() {
                self.metrics
                    .dropped
                    .get_or_create(&vec![("target".to_string(), name.clone())])
                    .inc_by(alerts.len() as u64);
                tracing::error!(target_url = %name, alerts = alerts.len(), "the notification queue is full; alerts dropped");
            }
        }
    }
}

struct SendCtx {
    target: Target,
    client: reqwest::Client,
    metrics: Arc<NotifyMetrics>,
    external_labels: BTreeMap<String, String>,
    external_url: String,
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn map(l: &Labels) -> Value {
    Value::Object(l.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>())
}

/// External labels added where the alert lacks them (Prometheus' notifier does the same).
fn with_external(l: &Labels, ext: &BTreeMap<String, String>) -> Labels {
    let mut out = l.clone();
    for (k, v) in ext {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out.sort();
    out
}

/// Alertmanager's fingerprint is a hash of the label set; any stable hash does for receivers.
fn fingerprint(l: &Labels) -> String {
    format!("{:016x}", crate::rule::hash_labels(l))
}

async fn run(ctx: SendCtx, mut rx: mpsc::Receiver<Vec<Outgoing>>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    match ctx.target.kind {
        NotifierKind::Alertmanager => loop {
            let mut stopping = false;
            let batch = tokio::select! {
                b = rx.recv() => b,
                // At shutdown what is queued is still sent once, as Prometheus drains its queue.
                _ = shutdown.changed() => {
                    stopping = true;
                    rx.try_recv().ok()
                }
            };
            let Some(mut batch) = batch else { break };
            while let Ok(more) = rx.try_recv() {
                batch.extend(more);
            }
            for chunk in batch.chunks(256) {
                let body: Vec<Value> = chunk
                    .iter()
                    .map(|o| {
                        let a = &o.alert;
                        json!({
                            "labels": map(&with_external(&a.labels, &ctx.external_labels)),
                            "annotations": map(&a.annotations),
                            "startsAt": rfc3339(a.starts_at),
                            "endsAt": rfc3339(a.ends_at),
                            "generatorURL": a.generator_url,
                        })
                    })
                    .collect();
                post(&ctx, Value::Array(body), chunk.len()).await;
            }
            if stopping {
                break;
            }
        },
        NotifierKind::Webhook | NotifierKind::Slack => {
            let mut groups: HashMap<(String, String), Group> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    b = rx.recv() => match b {
                        Some(batch) => {
                            let now = now_ms();
                            for o in batch {
                                add(&mut groups, o, now);
                            }
                        }
                        None => break,
                    },
                    _ = tick.tick() => {
                        let now = now_ms();
                        let mut due = Vec::new();
                        for (key, g) in &groups {
                            if g.due(now, &ctx.target) {
                                due.push(key.clone());
                            }
                        }
                        for key in due {
                            flush(&ctx, &key, groups.get_mut(&key).expect("due group exists"), now).await;
                        }
                        groups.retain(|_, g| !g.alerts.is_empty());
                    }
                    _ = shutdown.changed() => {
                        // At shutdown a group with news it has not sent yet (waiting for its group wait or
                        // interval) sends it once, rather than leave it to the next start.
                        while let Ok(batch) = rx.try_recv() {
                            let now = now_ms();
                            for o in batch {
                                add(&mut groups, o, now);
                            }
                        }
                        let now = now_ms();
                        for (key, g) in groups.iter_mut().filter(|(_, g)| g.changed) {
                            flush(&ctx, key, g, now).await;
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// Puts an alert into its group, marking the group changed if the alert is new or changed state.
fn add(groups: &mut HashMap<(String, String), Group>, o: Outgoing, now: i64) {
    let name = o.alert.labels.iter().find(|(k, _)| k == "alertname").map(|(_, v)| v.clone()).unwrap_or_default();
    let g = groups.entry((o.tenant.clone(), name)).or_insert_with(|| Group::new(now));
    let fp = fingerprint(&o.alert.labels);
    let changed = g.alerts.get(&fp).is_none_or(|old| old.resolved != o.alert.resolved);
    g.changed |= changed;
    g.alerts.insert(fp, o.alert);
}

/// Alerts of one alert name, as an Alertmanager route groups them by `alertname`.
struct Group {
    created: i64,
    last_flush: Option<i64>,
    changed: bool,
    alerts: BTreeMap<String, OutAlert>,
}

impl Group {
    fn new(now: i64) -> Group {
        Group { created: now, last_flush: None, changed: true, alerts: BTreeMap::new() }
    }

    fn due(&self, now: i64, t: &Target) -> bool {
        match self.last_flush {
            None => now - self.created >= t.group_wait.as_millis() as i64,
            Some(last) => {
                let expired = self.alerts.values().any(|a| !a.resolved && a.ends_at < now);
                (now - last >= t.group_interval.as_millis() as i64 && (self.changed || expired))
                    || now - last >= t.repeat_interval.as_millis() as i64
            }
        }
    }
}

async fn flush(ctx: &SendCtx, key: &(String, String), g: &mut Group, now: i64) {
    // An alert no evaluation refreshed before its end is resolved, as Alertmanager treats it.
    for a in g.alerts.values_mut() {
        if !a.resolved && a.ends_at < now {
            a.resolved = true;
        }
    }
    let firing: Vec<&OutAlert> = g.alerts.values().filter(|a| !a.resolved).collect();
    let resolved: Vec<&OutAlert> =
        if ctx.target.send_resolved { g.alerts.values().filter(|a| a.resolved).collect() } else { Vec::new() };
    let last_notified_firing = g.last_flush.is_some();
    g.last_flush = Some(now);
    g.changed = false;
    if firing.is_empty() && (resolved.is_empty() || !last_notified_firing) {
        g.alerts.retain(|_, a| !a.resolved);
        return;
    }
    let alerts: Vec<&OutAlert> = firing.iter().chain(resolved.iter()).copied().collect();
    let body = match ctx.target.kind {
        NotifierKind::Slack => slack_payload(ctx, &key.1, &firing, &resolved),
        _ => webhook_payload(ctx, key, &alerts, !firing.is_empty()),
    };
    post(ctx, body, alerts.len()).await;
    g.alerts.retain(|_, a| !a.resolved);
}

fn common(alerts: &[&OutAlert], f: impl Fn(&OutAlert) -> Labels) -> Labels {
    let mut it = alerts.iter();
    let Some(first) = it.next() else { return Vec::new() };
    let mut c = f(first);
    for a in it {
        let l = f(a);
        c.retain(|p| l.contains(p));
    }
    c
}

/// Alertmanager's webhook payload, version 4.
fn webhook_payload(ctx: &SendCtx, key: &(String, String), alerts: &[&OutAlert], firing: bool) -> Value {
    let status = |a: &OutAlert| if a.resolved { "resolved" } else { "firing" };
    let list: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let labels = with_external(&a.labels, &ctx.external_labels);
            json!({
                "status": status(a),
                "labels": map(&labels),
                "annotations": map(&a.annotations),
                "startsAt": rfc3339(a.starts_at),
                "endsAt": if a.resolved { rfc3339(a.ends_at) } else { "0001-01-01T00:00:00Z".to_string() },
                "generatorURL": a.generator_url,
                "fingerprint": fingerprint(&labels),
            })
        })
        .collect();
    let ext = ctx.external_labels.clone();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname={:?}}}", key.1),
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": "lumen",
        "groupLabels": {"alertname": key.1},
        "commonLabels": map(&common(alerts, |a| with_external(&a.labels, &ext))),
        "commonAnnotations": map(&common(alerts, |a| a.annotations.clone())),
        "externalURL": ctx.external_url,
        "alerts": list,
    })
}

/// Slack's incoming-webhook JSON (`text` in Slack's mrkdwn), which Mattermost, Rocket.Chat and Discord's
/// Slack-compatible endpoint also take.
fn slack_payload(ctx: &SendCtx, name: &str, firing: &[&OutAlert], resolved: &[&OutAlert]) -> Value {
    let mut text = String::new();
    let head =
        if firing.is_empty() { format!("[RESOLVED] {name}") } else { format!("[FIRING:{}] {name}", firing.len()) };
    text.push_str(&format!("*{head}*\n"));
    for (label, list) in [("Firing", firing), ("Resolved", resolved)] {
        if list.is_empty() {
            continue;
        }
        if !firing.is_empty() && !resolved.is_empty() {
            text.push_str(&format!("_{label}_\n"));
        }
        for a in list.iter().take(20) {
            let labels: Vec<String> =
                a.labels.iter().filter(|(k, _)| k != "alertname").map(|(k, v)| format!("{k}={v}")).collect();
            let summary = a
                .annotations
                .iter()
                .find(|(k, _)| k == "summary" || k == "description" || k == "message")
                .map(|(_, v)| format!(": {v}"))
                .unwrap_or_default();
            text.push_str(&format!("• {}{summary} (<{}|source>)\n", labels.join(" "), a.generator_url));
        }
        if list.len() > 20 {
            text.push_str(&format!("… and {} more\n", list.len() - 20));
        }
    }
    if !ctx.external_url.is_empty() {
        text.push_str(&format!("from {}", ctx.external_url));
    }
    json!({ "text": text, "username": "Lumen" })
}

async fn post(ctx: &SendCtx, body: Value, n: usize) {
    let key = vec![("target".to_string(), ctx.target.name.clone())];
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=3 {
        let mut req = ctx.client.post(&ctx.target.url).timeout(Duration::from_secs(10)).json(&body);
        if let Some(t) = &ctx.target.bearer_token {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                ctx.metrics.sent.get_or_create(&key).inc_by(n as u64);
                return;
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                tracing::warn!(target_url = %ctx.target.name, %status, attempt, answer = %text.chars().take(200).collect::<String>(), "a notification was refused");
                if status.is_client_error() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(target_url = %ctx.target.name, attempt, error = %e.without_url(), "sending a notification failed");
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    ctx.metrics.failed.get_or_create(&key).inc_by(n as u64);
    tracing::error!(target_url = %ctx.target.name, alerts = n, "giving up on a notification after 3 attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        assert_eq!(redact("https://user:pw@hooks.slack.com/services/T0/B0/SECRET?x=1"), "https://hooks.slack.com");
        assert_eq!(redact("http://127.0.0.1:9093/api/v2/alerts"), "http://127.0.0.1:9093");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_643_114_203_000), "2022-01-25T12:36:43.000Z");
    }
}
