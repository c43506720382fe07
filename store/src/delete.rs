//! Delete requests (issue 18 §2), as Loki's compactor and Prometheus' `delete_series` take them: a tenant,
//! label matchers, for logs optional line filters, and a time range.
//!
//! A request is durable before it is acknowledged (`deletes.json` in the store's directory, replaced
//! atomically) and hides what it names from every read at once: scans drop the rows it covers, whether in
//! the head or in parts. After `store.delete_cancel_period` (during which `cancel` withdraws it) the
//! store's maintenance flushes the head and rewrites every part holding covered rows without them, then
//! marks the request processed: the data is gone from disk. A crash half-way leaves the request
//! `received`, and the rewrite runs again (rewriting a part without rows it no longer holds is harmless).
//! A processed request stops hiding: data written later in its range is not deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use parking_lot::Mutex;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Tenant;
use crate::scan::{LabelMatcher, MatchOp};

/// How a line filter compares a line, as LogQL's `|=`, `!=`, `|~`, `!~`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineOp {
    #[serde(rename = "|=")]
    Contains,
    #[serde(rename = "!=")]
    NotContains,
    #[serde(rename = "|~")]
    Matches,
    #[serde(rename = "!~")]
    NotMatches,
}

/// What a request asks to delete, as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteSpec {
    /// The query as the client wrote it (a LogQL selector with line filters, or `match[]` selectors).
    pub query: String,
    /// Label matchers, `(name, op, value)` with op one of `=`, `!=`, `=~`, `!~`; any set may match
    /// (`match[]` given several times): a row is covered when one set matches.
    pub matchers: Vec<Vec<(String, String, String)>>,
    /// Line filters, all of which must match (logs only).
    #[serde(default)]
    pub line_filters: Vec<(LineOp, String)>,
    /// Covered times, inclusive, nanoseconds.
    pub start_ns: i64,
    pub end_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeleteStatus {
    Received,
    Processed,
}

/// A stored request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub id: String,
    pub tenant: String,
    #[serde(flatten)]
    pub spec: DeleteSpec,
    pub created_ns: i64,
    pub status: DeleteStatus,
    #[serde(default)]
    pub processed_ns: Option<i64>,
}

/// A request compiled for reads.
#[derive(Debug, Clone)]
pub(crate) struct Active {
    pub(crate) matchers: Vec<Vec<LabelMatcher>>,
    pub(crate) line: Vec<(LineOp, Option<Regex>, String)>,
    pub(crate) start_ns: i64,
    pub(crate) end_ns: i64,
}

impl Active {
    /// Whether `line` passes every line filter (a request without filters covers every line).
    pub(crate) fn line_matches(&self, line: &str) -> bool {
        self.line.iter().all(|(op, re, s)| match op {
            LineOp::Contains => line.contains(s.as_str()),
            LineOp::NotContains => !line.contains(s.as_str()),
            LineOp::Matches => re.as_ref().is_some_and(|r| r.is_match(line)),
            LineOp::NotMatches => re.as_ref().is_none_or(|r| !r.is_match(line)),
        })
    }

    pub(crate) fn has_line_filters(&self) -> bool {
        !self.line.is_empty()
    }
}

fn op(s: &str) -> Result<MatchOp> {
    Ok(match s {
        "=" => MatchOp::Eq,
        "!=" => MatchOp::Neq,
        "=~" => MatchOp::Re,
        "!~" => MatchOp::Nre,
        other => return Err(Error::Config(format!("unknown matcher operator {other:?}"))),
    })
}

impl DeleteSpec {
    /// Compiles the matchers and filters; the error names what does not compile.
    pub(crate) fn compile(&self) -> Result<Active> {
        let matchers = self
            .matchers
            .iter()
            .map(|set| {
                set.iter()
                    .map(|(n, o, v)| {
                        LabelMatcher::new(n.clone(), op(o)?, v.clone())
                            .map_err(|e| Error::Config(format!("matcher {n}{o}{v:?}: {e}")))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let line = self
            .line_filters
            .iter()
            .map(|(op, s)| {
                let re = match op {
                    LineOp::Matches | LineOp::NotMatches => {
                        Some(Regex::new(s).map_err(|e| Error::Config(format!("line filter {s:?}: {e}")))?)
                    }
                    _ => None,
                };
                Ok((*op, re, s.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Active { matchers, line, start_ns: self.start_ns, end_ns: self.end_ns })
    }

    /// Checks what a client sent.
    ///
    /// # Errors
    /// A message for a 400: no matcher, an empty range, a matcher or filter that does not compile.
    pub fn validate(&self) -> Result<()> {
        if self.matchers.is_empty() || self.matchers.iter().any(|s| s.is_empty()) {
            return Err(Error::Config("a delete needs a selector with at least one matcher".into()));
        }
        if self.start_ns > self.end_ns {
            return Err(Error::Config("the delete's start is after its end".into()));
        }
        self.compile().map(|_| ())
    }
}

/// A matcher as a request stores it.
pub fn matcher_spec(m: &LabelMatcher) -> (String, String, String) {
    let op = match m.op {
        MatchOp::Eq => "=",
        MatchOp::Neq => "!=",
        MatchOp::Re => "=~",
        MatchOp::Nre => "!~",
    };
    (m.name.clone(), op.to_string(), m.value.clone())
}

/// The request a selector retention rule amounts to at `now`: what its selector matches in the whole
/// days before its period, never stored.
pub(crate) fn retention_request(rule: &crate::config::RetentionRule, now_ns: i64) -> DeleteRequest {
    let period = i64::try_from(rule.period.as_nanos()).unwrap_or(i64::MAX);
    let cutoff_day = crate::time::day_of_ns(now_ns.saturating_sub(period));
    DeleteRequest {
        id: format!("retention {}", rule.selector),
        tenant: rule.tenant.clone(),
        spec: DeleteSpec {
            query: rule.selector.clone(),
            matchers: vec![rule.matchers.iter().map(matcher_spec).collect()],
            line_filters: Vec::new(),
            start_ns: i64::MIN,
            end_ns: cutoff_day.saturating_mul(crate::time::NANOS_PER_DAY) - 1,
        },
        created_ns: now_ns,
        status: DeleteStatus::Received,
        processed_ns: None,
    }
}

/// The retention period of `tenant`: its rule without a selector, else `global`.
pub(crate) fn tenant_period(
    rules: &[crate::config::RetentionRule],
    tenant: &str,
    global: std::time::Duration,
) -> std::time::Duration {
    rules.iter().find(|r| r.tenant == tenant && r.matchers.is_empty()).map_or(global, |r| r.period)
}

/// What the delete and retention passes need of a store (both stores implement it).
pub(crate) trait Rewritable: Clone + Send + Sync + 'static {
    /// `log` or `metric`, for messages.
    const KIND: &'static str;
    fn deletes(&self) -> &Deletes;
    fn options(&self) -> &crate::config::StoreOptions;
    fn maintenance_lock(&self) -> &tokio::sync::Mutex<()>;
    /// Rewrites the parts holding rows `req` covers without them; (parts rewritten, rows removed).
    fn rewrite_for_delete(&self, req: &DeleteRequest) -> Result<(usize, u64)>;
    fn flush(&self) -> impl std::future::Future<Output = Result<()>> + Send;
}

/// Runs `rewrite_for_delete` on a blocking thread.
async fn rewrite<S: Rewritable>(store: &S, req: &DeleteRequest) -> Result<(usize, u64)> {
    let (this, r) = (store.clone(), req.clone());
    tokio::task::spawn_blocking(move || this.rewrite_for_delete(&r))
        .await
        .map_err(|e| Error::WalClosed { reason: format!("{} rewrite task failed: {e}", S::KIND) })?
}

/// Rewrites what the requests past `store.delete_cancel_period` cover, after a flush (so every row they
/// cover that was written before them is in a part), and marks them processed. Returns the parts rewritten.
pub(crate) async fn process<S: Rewritable>(store: &S) -> Result<usize> {
    let period = i64::try_from(store.options().tuning.delete_cancel_period.as_nanos()).unwrap_or(i64::MAX);
    let due = store.deletes().due(period);
    if due.is_empty() {
        return Ok(0);
    }
    store.flush().await?;
    let _guard = store.maintenance_lock().lock().await;
    let mut rewritten = 0;
    for req in due {
        let started = std::time::Instant::now();
        let (n, removed) = rewrite(store, &req).await?;
        store.deletes().processed(&req.id)?;
        rewritten += n;
        tracing::info!(
            kind = S::KIND,
            tenant = %req.tenant,
            id = %req.id,
            query = %req.spec.query,
            parts_rewritten = n,
            removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "delete processed: what it covers is gone from disk"
        );
    }
    Ok(rewritten)
}

/// Applies the selector retention rules: rewrites out what each matches in the whole days past its period.
/// Returns the parts rewritten.
pub(crate) async fn apply_rules<S: Rewritable>(store: &S, now_ns: i64) -> Result<usize> {
    let mut n = 0;
    for rule in store.options().retention_rules.iter().filter(|r| !r.matchers.is_empty()) {
        let req = retention_request(rule, now_ns);
        let _guard = store.maintenance_lock().lock().await;
        let (parts, removed) = rewrite(store, &req).await?;
        if parts > 0 {
            tracing::info!(kind = S::KIND, tenant = %rule.tenant, selector = %rule.selector, parts, removed, "retention rule removed data past its period");
        }
        n += parts;
    }
    Ok(n)
}

/// The parts of a store older than their tenant's period (its rule without a selector, else the global one).
pub(crate) fn past_period<'a>(
    options: &crate::config::StoreOptions,
    now_ns: i64,
    parts: impl Iterator<Item = (u64, &'a str, i64)>,
) -> std::collections::HashSet<u64> {
    parts
        .filter(|(_, tenant, day)| {
            let period = tenant_period(&options.retention_rules, tenant, options.retention);
            *day < crate::time::day_of_ns(now_ns.saturating_sub(i64::try_from(period.as_nanos()).unwrap_or(i64::MAX)))
        })
        .map(|(id, _, _)| id)
        .collect()
}

/// What cancelling a request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    Cancelled,
    NotFound,
    /// Its rewrite has run: the data is gone and cannot come back.
    AlreadyProcessed,
}

/// The requests of one store, persisted in `<dir>/deletes.json`.
#[derive(Debug)]
pub(crate) struct Deletes {
    dir: PathBuf,
    requests: Mutex<Vec<DeleteRequest>>,
    /// Compiled requests still hiding data, by tenant; rebuilt on change.
    active: Mutex<Arc<Vec<ActiveEntry>>>,
    /// A query node's copy of its ingest node's pending requests, by tenant, as the last answer of that
    /// node gave them (see [`Deletes::adopt_peer`]); applied to reads like this store's own.
    peer: Mutex<HashMap<String, PeerDeletes>>,
}

const FILE: &str = "deletes.json";

/// Most requests one store holds pending: each is applied to every row a read covers until it is
/// processed, so they are bounded; more are refused (400) until some are processed or cancelled.
pub const MAX_PENDING: usize = 100;

/// Processed requests kept for `GET /loki/api/v1/delete`; older ones are forgotten.
const MAX_PROCESSED_KEPT: usize = 1000;

/// (tenant, compiled request, id).
type ActiveEntry = (String, Arc<Active>, String);

/// An ingest node's pending requests of one tenant, as given and compiled.
type PeerDeletes = (Vec<DeleteSpec>, Vec<Arc<Active>>);

impl Deletes {
    pub(crate) fn load(dir: &Path) -> Result<Deletes> {
        let requests: Vec<DeleteRequest> =
            crate::manifest::load_json(dir, FILE, "delete requests")?.unwrap_or_default();
        let d = Deletes {
            dir: dir.to_path_buf(),
            requests: Mutex::new(requests),
            active: Mutex::new(Arc::new(Vec::new())),
            peer: Mutex::new(HashMap::new()),
        };
        d.rebuild()?;
        Ok(d)
    }

    /// Reads the requests again from disk (a query node following a directory another process writes).
    pub(crate) fn reload(&self) -> Result<()> {
        let requests: Vec<DeleteRequest> =
            crate::manifest::load_json(&self.dir, FILE, "delete requests")?.unwrap_or_default();
        *self.requests.lock() = requests;
        self.rebuild()
    }

    fn rebuild(&self) -> Result<()> {
        let reqs = self.requests.lock();
        let mut active = Vec::new();
        for r in reqs.iter().filter(|r| r.status == DeleteStatus::Received) {
            active.push((r.tenant.clone(), Arc::new(r.spec.compile()?), r.id.clone()));
        }
        *self.active.lock() = Arc::new(active);
        Ok(())
    }

    fn persist(&self, reqs: &[DeleteRequest]) -> Result<()> {
        crate::manifest::store_json(&self.dir, FILE, "delete requests", &reqs)
    }

    /// Adds a request, durably, and returns it.
    pub(crate) fn add(&self, tenant: &Tenant, spec: DeleteSpec) -> Result<DeleteRequest> {
        spec.validate()?;
        let now = crate::time::now_ns();
        let mut reqs = self.requests.lock();
        if reqs.iter().filter(|r| r.status == DeleteStatus::Received).count() >= MAX_PENDING {
            return Err(Error::Config(format!(
                "{MAX_PENDING} delete requests are pending already (the limit): wait until they are processed \
                 (store.delete_cancel_period) or cancel some"
            )));
        }
        let mut n = 0;
        let id = loop {
            let id = format!("{:x}{}", now, if n == 0 { String::new() } else { format!("-{n}") });
            if !reqs.iter().any(|r| r.id == id) {
                break id;
            }
            n += 1;
        };
        let req = DeleteRequest {
            id,
            tenant: tenant.as_str().to_string(),
            spec,
            created_ns: now,
            status: DeleteStatus::Received,
            processed_ns: None,
        };
        let mut next = reqs.clone();
        next.push(req.clone());
        self.persist(&next)?;
        *reqs = next;
        drop(reqs);
        self.rebuild()?;
        Ok(req)
    }

    pub(crate) fn list(&self, tenant: &Tenant) -> Vec<DeleteRequest> {
        self.requests.lock().iter().filter(|r| r.tenant == tenant.as_str()).cloned().collect()
    }

    pub(crate) fn cancel(&self, tenant: &Tenant, id: &str) -> Result<Cancel> {
        let mut reqs = self.requests.lock();
        let Some(r) = reqs.iter().find(|r| r.id == id && r.tenant == tenant.as_str()) else {
            return Ok(Cancel::NotFound);
        };
        if r.status == DeleteStatus::Processed {
            return Ok(Cancel::AlreadyProcessed);
        }
        let next: Vec<DeleteRequest> = reqs.iter().filter(|r| r.id != id).cloned().collect();
        self.persist(&next)?;
        *reqs = next;
        drop(reqs);
        self.rebuild()?;
        Ok(Cancel::Cancelled)
    }

    /// The requests hiding data of `tenant`.
    pub(crate) fn active(&self, tenant: &Tenant) -> Vec<Arc<Active>> {
        let all = self.active.lock().clone();
        let mut out: Vec<Arc<Active>> =
            all.iter().filter(|(t, _, _)| t == tenant.as_str()).map(|(_, a, _)| a.clone()).collect();
        if let Some((_, peer)) = self.peer.lock().get(tenant.as_str()) {
            out.extend(peer.iter().cloned());
        }
        out
    }

    /// The tenant's requests still hiding data, as given.
    pub(crate) fn pending(&self, tenant: &Tenant) -> Vec<DeleteSpec> {
        self.requests
            .lock()
            .iter()
            .filter(|r| r.status == DeleteStatus::Received && r.tenant == tenant.as_str())
            .map(|r| r.spec.clone())
            .collect()
    }

    /// Takes `specs` as the tenant's pending requests of the ingest node this query node asks (issue 22):
    /// they hide rows of the parts this node reads from the bucket at once, before a commit brings the
    /// requests themselves. Replaces what the last answer gave; a spec that does not compile is left out
    /// with a warning (the ingest node compiled it, so this is a version mismatch).
    pub(crate) fn adopt_peer(&self, tenant: &Tenant, specs: &[DeleteSpec]) {
        let mut peer = self.peer.lock();
        if specs.is_empty() {
            peer.remove(tenant.as_str());
            return;
        }
        if peer.get(tenant.as_str()).is_some_and(|(known, _)| known.as_slice() == specs) {
            return;
        }
        let compiled = specs
            .iter()
            .filter_map(|s| match s.compile() {
                Ok(a) => Some(Arc::new(a)),
                Err(error) => {
                    tracing::warn!(%error, query = %s.query, "an ingest node's pending delete does not compile here; it is not applied to this node's parts");
                    None
                }
            })
            .collect();
        peer.insert(tenant.as_str().to_string(), (specs.to_vec(), compiled));
    }

    /// Received requests older than `min_age_ns`, due for their rewrite.
    pub(crate) fn due(&self, min_age_ns: i64) -> Vec<DeleteRequest> {
        let now = crate::time::now_ns();
        self.requests
            .lock()
            .iter()
            .filter(|r| r.status == DeleteStatus::Received && now - r.created_ns >= min_age_ns)
            .cloned()
            .collect()
    }

    /// Marks a request processed (its rewrite finished).
    pub(crate) fn processed(&self, id: &str) -> Result<()> {
        let mut reqs = self.requests.lock();
        let mut next = reqs.clone();
        for r in next.iter_mut().filter(|r| r.id == id) {
            r.status = DeleteStatus::Processed;
            r.processed_ns = Some(crate::time::now_ns());
        }
        // Keep the history bounded: forget the oldest processed requests past the limit.
        let processed = next.iter().filter(|r| r.status == DeleteStatus::Processed).count();
        let mut forget = processed.saturating_sub(MAX_PROCESSED_KEPT);
        next.retain(|r| {
            let drop = forget > 0 && r.status == DeleteStatus::Processed;
            forget -= usize::from(drop);
            !drop
        });
        self.persist(&next)?;
        *reqs = next;
        drop(reqs);
        self.rebuild()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DeleteSpec {
        DeleteSpec {
            query: r#"{app="a"} |= "secret""#.into(),
            matchers: vec![vec![("app".into(), "=".into(), "a".into())]],
            line_filters: vec![(LineOp::Contains, "secret".into())],
            start_ns: 0,
            end_ns: i64::MAX,
        }
    }

    #[test]
    fn requests_persist_cancel_and_process() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenant::default_tenant();
        let d = Deletes::load(dir.path()).unwrap();
        let a = d.add(&t, spec()).unwrap();
        let b = d.add(&t, spec()).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(d.active(&t).len(), 2);
        assert!(d.active(&Tenant::new("other").unwrap()).is_empty());
        // Durable: a new instance reads both back.
        let d = Deletes::load(dir.path()).unwrap();
        assert_eq!(d.list(&t).len(), 2);
        assert_eq!(d.cancel(&t, &a.id).unwrap(), Cancel::Cancelled);
        assert_eq!(d.cancel(&t, &a.id).unwrap(), Cancel::NotFound);
        d.processed(&b.id).unwrap();
        assert_eq!(d.cancel(&t, &b.id).unwrap(), Cancel::AlreadyProcessed);
        assert!(d.active(&t).is_empty(), "a processed request hides nothing");
        let d = Deletes::load(dir.path()).unwrap();
        assert_eq!(d.list(&t)[0].status, DeleteStatus::Processed);
    }

    #[test]
    fn pending_requests_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenant::default_tenant();
        let d = Deletes::load(dir.path()).unwrap();
        let ids: Vec<String> = (0..MAX_PENDING).map(|_| d.add(&t, spec()).unwrap().id).collect();
        let err = d.add(&t, spec()).unwrap_err().to_string();
        assert!(err.contains("pending already"), "{err}");
        d.processed(&ids[0]).unwrap();
        d.add(&t, spec()).unwrap();
    }

    #[test]
    fn line_filters_and_validation() {
        let a = spec().compile().unwrap();
        assert!(a.line_matches("a secret here") && !a.line_matches("nothing"));
        let mut s = spec();
        s.line_filters = vec![(LineOp::Matches, "user=[0-9]+".into()), (LineOp::NotContains, "keep".into())];
        let a = s.compile().unwrap();
        assert!(a.line_matches("login user=42") && !a.line_matches("login user=42 keep") && !a.line_matches("x"));
        s.line_filters = vec![(LineOp::Matches, "(".into())];
        assert!(s.validate().is_err());
        let mut s = spec();
        s.matchers = vec![];
        assert!(s.validate().unwrap_err().to_string().contains("at least one matcher"));
        let mut s = spec();
        s.start_ns = 10;
        s.end_ns = 5;
        assert!(s.validate().is_err());
    }
}
