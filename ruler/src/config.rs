//! `[ruler]`: where rules come from, how alerts are sent, and Prometheus' ruler defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[ruler]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RulerConfig {
    /// Globs of Prometheus-format rule files over PromQL, for the default tenant (`rule_files` of
    /// Prometheus' own config).
    pub rule_files: Vec<String>,
    /// The same per tenant: `{ "team-a" = ["/etc/lumen/rules/team-a/*.yaml"] }`.
    pub tenant_rule_files: BTreeMap<String, Vec<String>>,
    /// Loki's local rule layout with LogQL rules: `<dir>/<tenant>/<namespace>.yaml` ("fake" is the default
    /// tenant, as in single-tenant Loki). "" for none.
    pub loki_rules_dir: PathBuf,
    /// Interval of groups that do not set one (`global.evaluation_interval`).
    #[serde(with = "store::config::duration")]
    pub evaluation_interval: Duration,
    /// Query offset of groups that do not set one (`global.rule_query_offset`).
    #[serde(with = "store::config::duration")]
    pub query_offset: Duration,
    /// Alertmanagers to send alerts to, through their API v2 (`http://host:9093`).
    pub alertmanager_url: Vec<String>,
    /// Other notification targets (webhook, Slack-style, more Alertmanagers with credentials).
    pub notifier: Vec<NotifierConfig>,
    /// The URL Lumen is reached at, for alerts' `generatorURL` and templates' `externalURL`; "" derives it
    /// from server.http_addr.
    pub external_url: String,
    /// Labels added to alerts sent (where an alert lacks them), visible in templates as $externalLabels.
    pub external_labels: BTreeMap<String, String>,
    /// Add the rule's tenant to the alerts sent, under this label name (e.g. "tenant"), so that one
    /// Alertmanager can route several tenants' alerts; "" for none. The APIs and ALERTS do not carry it.
    pub tenant_label: String,
    /// Least time between two sends of a firing alert (`--rules.alert.resend-delay`).
    #[serde(with = "store::config::duration")]
    pub resend_delay: Duration,
    /// How long the server may be down and alerts still restore their `for` state.
    #[serde(with = "store::config::duration")]
    pub for_outage_tolerance: Duration,
    /// Least time an alert waits after a restart before it fires again (for `for` of at least this).
    #[serde(with = "store::config::duration")]
    pub for_grace_period: Duration,
    /// Also send every sample the rules write (recorded series, ALERTS) to these remote-write receivers
    /// (`http://prometheus:9090/api/v1/write`), with X-Scope-OrgID set to the rule's tenant, as Loki's
    /// ruler does. The local store keeps them either way.
    pub remote_write_url: Vec<String>,
    /// A file with a bearer token for the remote-write receivers; "" for none.
    pub remote_write_bearer_token_file: PathBuf,
    /// Alerts queued per notification target before new ones are dropped.
    pub notification_queue_capacity: usize,
    /// Most rule groups a tenant may create through the config API.
    pub max_rule_groups_per_tenant: usize,
    /// Most rules in one group created through the config API.
    pub max_rules_per_rule_group: usize,
    /// Whether query nodes (`server.role = "query"`) evaluate the rules, writing their samples through
    /// an ingest node: on with several ingest nodes (`server.role = "ingest"`, which evaluate none), off
    /// (the default) with one server of role "all", which evaluates them itself.
    pub on_query_nodes: bool,
}

impl Default for RulerConfig {
    fn default() -> Self {
        RulerConfig {
            rule_files: Vec::new(),
            tenant_rule_files: BTreeMap::new(),
            loki_rules_dir: PathBuf::new(),
            evaluation_interval: Duration::from_secs(60),
            query_offset: Duration::ZERO,
            alertmanager_url: Vec::new(),
            notifier: Vec::new(),
            external_url: String::new(),
            external_labels: BTreeMap::new(),
            tenant_label: String::new(),
            resend_delay: Duration::from_secs(60),
            for_outage_tolerance: Duration::from_secs(3600),
            for_grace_period: Duration::from_secs(600),
            remote_write_url: Vec::new(),
            remote_write_bearer_token_file: PathBuf::new(),
            notification_queue_capacity: 10_000,
            max_rule_groups_per_tenant: 100,
            max_rules_per_rule_group: 100,
            on_query_nodes: false,
        }
    }
}

/// What kind of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifierKind {
    /// Alertmanager's API v2: every alert, re-sent every `resend_delay` while firing.
    Alertmanager,
    /// Alertmanager's webhook payload (version 4), grouped by alert name.
    Webhook,
    /// Slack-style `{"text": ...}`, grouped by alert name.
    Slack,
}

/// `[[ruler.notifier]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    #[serde(rename = "type")]
    pub kind: NotifierKind,
    /// The URL. Webhook URLs often hold a secret: prefer `url_file` or `url_env` for those.
    #[serde(default)]
    pub url: String,
    /// A file whose content is the URL.
    #[serde(default)]
    pub url_file: PathBuf,
    /// An environment variable that holds the URL.
    #[serde(default)]
    pub url_env: String,
    /// A file with a bearer token sent as `Authorization: Bearer`.
    #[serde(default)]
    pub bearer_token_file: PathBuf,
    /// Also tell when alerts resolve (webhook, slack).
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// How long a new group of alerts waits before its first notification (webhook, slack).
    #[serde(default = "group_wait", with = "store::config::duration")]
    pub group_wait: Duration,
    /// Least time between notifications of a group whose alerts changed (webhook, slack).
    #[serde(default = "group_interval", with = "store::config::duration")]
    pub group_interval: Duration,
    /// How often a group still firing is notified again (webhook, slack).
    #[serde(default = "repeat_interval", with = "store::config::duration")]
    pub repeat_interval: Duration,
}

fn yes() -> bool {
    true
}
fn group_wait() -> Duration {
    Duration::from_secs(30)
}
fn group_interval() -> Duration {
    Duration::from_secs(300)
}
fn repeat_interval() -> Duration {
    Duration::from_secs(4 * 3600)
}

impl RulerConfig {
    /// Masks what may be secret (notifier URLs), for the status endpoint.
    pub fn masked(&self) -> RulerConfig {
        let mut c = self.clone();
        for n in &mut c.notifier {
            if !n.url.is_empty() {
                n.url = format!("{}/<masked>", crate::notify::redact(&n.url));
            }
        }
        c.alertmanager_url = c.alertmanager_url.iter().map(|u| crate::notify::redact(u)).collect();
        c.remote_write_url = c.remote_write_url.iter().map(|u| crate::notify::redact(u)).collect();
        c
    }
}
