//! Query nodes and their ingest nodes (issue 22).
//!
//! A query node (`server.role = "query"`) reads the parts of the bucket commit it follows. What an
//! ingest node acknowledged since (its head, parts it flushed or compacted and has not synced yet) is
//! only there, so for each selection the query node asks the ingest nodes named in `query.ingest_urls`
//! for it: it sends the ids of the parts it would read, and the ingest node answers, from one consistent
//! view of its store, which of those it still holds (`keep`: a compaction may have replaced some) and
//! every matching row of its head and of its other parts. The query node then reads only the kept parts
//! and adds the rows: each acknowledged row once, whatever flushes, compactions and syncs run meanwhile.
//! Part ids are safe to compare: the ingest node's numbering continues from the commits the query node
//! follows, and a successor writer continues from the newest commit.
//!
//! Only the writer of the tree the parts come from answers: the holder of that tree's writer lease, whose
//! `server.node_name` is the request's `node` (empty for the prefix's own writer, role "all"); every other
//! node answers 409, which the query node passes over. With several ingest nodes (role "ingest") a query
//! node reads one [`Tree`] per node and asks each node for its own ([`TreeSet`]), all at once. When no
//! ingest node answers for a tree, the query answers from the bucket alone and says so in a warning,
//! except for a tree whose writer released its lease at a graceful stop ([`TreeSet::retired`]): that tree
//! holds everything.
//!
//! The wire format, both ways over HTTP POST with the caller's own `Authorization` and
//! `X-Scope-OrgID` headers (the ingest node checks them as for any read): the request is JSON
//! ([`LogDeltaRequest`], [`MetricDeltaRequest`]); the answer is `u32le n | n bytes of JSON`
//! ([`DeltaHead`]) followed by an Arrow IPC stream of the rows (logs: the requested columns, as a scan
//! gives them; metrics: `series` u32 (an index into `DeltaHead::series`), `t` i64 ms, `v` f64).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow_buffer::ScalarBuffer;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use store::model::{Labels, Tenant};
use store::{LabelMatcher, LogStore, MatchOp, ScanRequest, SelectedSeries};

/// Where the log delta is asked for.
pub const LOGS_PATH: &str = "/internal/v1/delta/logs";
/// Where the metric delta is asked for.
pub const METRICS_PATH: &str = "/internal/v1/delta/metrics";

/// Where an ingest node answers what changed in its samples since a mark (a query node's results cache).
pub const METRIC_CHANGES_PATH: &str = "/internal/v1/changes/metrics";

/// A query node's question for its results cache: the ingest node's current change mark, and what it
/// appended since `since` (a mark it gave before).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesRequest {
    pub node: String,
    pub since: Option<store::ChangeMark>,
}

/// The answer to [`ChangesRequest`]: [`store::MetricStore::change_mark`] and
/// [`store::MetricStore::changed_since`] (`i64::MIN` without `since`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesAnswer {
    pub mark: store::ChangeMark,
    pub changed_since: i64,
}

/// A label matcher on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireMatcher {
    pub name: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    pub value: String,
}

impl WireMatcher {
    pub fn from_store(m: &LabelMatcher) -> WireMatcher {
        WireMatcher { name: m.name.clone(), op: m.op.symbol().into(), value: m.value.clone() }
    }

    /// # Errors
    /// An unknown operator or an invalid regular expression.
    pub fn to_store(&self) -> Result<LabelMatcher, String> {
        let op = match self.op.as_str() {
            "=" => MatchOp::Eq,
            "!=" => MatchOp::Neq,
            "=~" => MatchOp::Re,
            "!~" => MatchOp::Nre,
            other => return Err(format!("unknown matcher operator {other:?}")),
        };
        LabelMatcher::new(self.name.clone(), op, self.value.clone()).map_err(|e| e.to_string())
    }
}

/// A query node's request for the log rows it does not hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogDeltaRequest {
    pub start_ns: i64,
    pub end_ns: i64,
    pub matchers: Vec<WireMatcher>,
    #[serde(default)]
    pub line_contains: Vec<String>,
    /// The columns wanted, as in [`store::ScanRequest::columns`].
    pub columns: Option<Vec<String>>,
    /// `(rows, newest)`, as in [`store::ScanRequest::stream_limit`].
    #[serde(default)]
    pub stream_limit: Option<(u64, bool)>,
    /// The ids of the parts the query node would read.
    pub have: Vec<u64>,
    /// Also answer the tenant's label and field names ([`DeltaHead::labels`], [`DeltaHead::fields`]): a
    /// query node's SQL table takes the columns the writer knows and the bucket does not yet.
    #[serde(default)]
    pub schema: bool,
    /// The ingest node whose tree the parts in `have` come from (`server.node_name` of a node with
    /// `server.role = "ingest"`); empty for the prefix's own writer (`server.role = "all"`). Only that node
    /// answers; the others answer 409.
    #[serde(default)]
    pub node: String,
}

/// A query node's request for the samples it does not hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricDeltaRequest {
    pub mint: i64,
    pub maxt: i64,
    pub matchers: Vec<WireMatcher>,
    pub max_samples: usize,
    pub have: Vec<u64>,
    /// As [`LogDeltaRequest::node`].
    #[serde(default)]
    pub node: String,
}

/// The bucket trees a query node reads besides its own data directory's (issue 22, several ingest
/// nodes): one per ingest node (`prefix/nodes/<name>/`), each followed into its own stores. The query
/// paths read every tree and ask each tree's node for what it has not synced.
#[derive(Clone)]
pub struct Tree {
    /// The ingest node's name (`server.node_name`).
    pub node: String,
    pub logs: LogStore,
    pub metrics: store::MetricStore,
}

/// What a query reads: the query node's own stores (the prefix's own commits, node `""`) when `root`, and
/// the ingest nodes' trees.
#[derive(Clone)]
pub struct TreeSet {
    /// Whether the own stores are read and their writer asked: a query node whose bucket holds ingest
    /// nodes' trees and no commit of the prefix's own leaves them out (nobody answers for them).
    pub root: bool,
    pub others: Arc<Vec<Tree>>,
    /// The trees (by node; `""` for the prefix's own) whose writer lease was released at a graceful stop
    /// and not taken since: they hold everything their node acknowledged, and nobody is asked for them.
    pub retired: HashSet<String>,
}

impl Default for TreeSet {
    fn default() -> Self {
        TreeSet { root: true, others: Arc::new(Vec::new()), retired: HashSet::new() }
    }
}

/// The trees of a query node, replaced as ingest nodes appear in the bucket.
pub type Trees = Arc<parking_lot::RwLock<TreeSet>>;

impl TreeSet {
    /// `(node, logs)` of every tree read, the own stores first.
    pub fn log_stores<'a>(&'a self, own: &'a LogStore) -> Vec<(&'a str, &'a LogStore)> {
        let own = self.root.then_some(("", own));
        own.into_iter().chain(self.others.iter().map(|t| (t.node.as_str(), &t.logs))).collect()
    }

    /// `(node, metrics)` of every tree read, the own stores first.
    pub fn metric_stores<'a>(&'a self, own: &'a store::MetricStore) -> Vec<(&'a str, &'a store::MetricStore)> {
        let own = self.root.then_some(("", own));
        own.into_iter().chain(self.others.iter().map(|t| (t.node.as_str(), &t.metrics))).collect()
    }
}

/// The JSON head of an answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeltaHead {
    /// Of the parts the query node named, those the ingest node still holds.
    pub keep: Vec<u64>,
    /// Logs: the labels of every stream whose rows follow, by stream id.
    #[serde(default)]
    pub streams: Vec<(u64, Vec<(String, String)>)>,
    /// Metrics: the labels of each series the rows' `series` column points into.
    #[serde(default)]
    pub series: Vec<Vec<(String, String)>>,
    /// The tenant's delete requests the ingest node has not processed yet, taken before its snapshot: the
    /// query node hides what they cover in the parts it reads itself.
    #[serde(default)]
    pub deletes: Vec<store::delete::DeleteSpec>,
    /// Logs, when asked for (`LogDeltaRequest::schema`): the tenant's label names and field names.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub fields: Vec<String>,
}

/// The label and field names of a tenant's logs on an ingest node.
#[derive(Debug, Clone, Default)]
pub struct LogColumns {
    pub labels: Vec<String>,
    pub fields: Vec<String>,
}

/// What an ingest node added to a log selection.
#[derive(Debug, Default)]
pub struct LogDelta {
    pub keep: HashSet<u64>,
    pub streams: HashMap<u64, Arc<Labels>>,
    pub batches: Vec<RecordBatch>,
    pub deletes: Vec<store::delete::DeleteSpec>,
    pub columns: LogColumns,
}

/// What an ingest node added to a metric selection.
#[derive(Debug, Default)]
pub struct MetricDelta {
    pub keep: HashSet<u64>,
    pub series: Vec<SelectedSeries>,
    pub deletes: Vec<store::delete::DeleteSpec>,
}

fn pairs(labels: &Labels) -> Vec<(String, String)> {
    labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Encodes an answer.
///
/// # Errors
/// Arrow's IPC writer failed (batches of another schema).
pub fn encode(head: &DeltaHead, schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(head).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&u32::try_from(json.len()).map_err(|_| "answer head too large")?.to_le_bytes());
    out.extend_from_slice(&json);
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, schema).map_err(|e| e.to_string())?;
    for b in batches {
        w.write(b).map_err(|e| e.to_string())?;
    }
    w.finish().map_err(|e| e.to_string())?;
    drop(w);
    Ok(out)
}

/// Decodes an answer.
///
/// # Errors
/// A body that is not one.
pub fn decode(body: &[u8]) -> Result<(DeltaHead, Vec<RecordBatch>), String> {
    let n = body.get(..4).ok_or("answer shorter than its length prefix")?;
    let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
    let json = body.get(4..4 + n).ok_or("answer shorter than its JSON head")?;
    let head: DeltaHead = serde_json::from_slice(json).map_err(|e| format!("answer head: {e}"))?;
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(&body[4 + n..]), None)
        .map_err(|e| format!("answer rows: {e}"))?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| format!("answer rows: {e}"))?;
    Ok((head, batches))
}

/// The schema of a metric answer's rows.
pub fn metric_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("series", DataType::UInt32, false),
        Field::new("t", DataType::Int64, false),
        Field::new("v", DataType::Float64, false),
    ]))
}

/// Encodes a metric answer.
///
/// # Errors
/// As [`encode`].
pub fn encode_metrics(
    keep: Vec<u64>,
    series: &[SelectedSeries],
    deletes: Vec<store::delete::DeleteSpec>,
) -> Result<Vec<u8>, String> {
    let schema = metric_schema();
    let head =
        DeltaHead { keep, series: series.iter().map(|s| pairs(&s.labels)).collect(), deletes, ..DeltaHead::default() };
    let mut batches = Vec::with_capacity(series.len());
    for (i, s) in series.iter().enumerate() {
        let i = u32::try_from(i).map_err(|_| "too many series")?;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(UInt32Array::from(vec![i; s.t.len()])),
                Arc::new(Int64Array::new(s.t.clone(), None)),
                Arc::new(Float64Array::new(s.v.clone(), None)),
            ],
        )
        .map_err(|e| e.to_string())?;
        batches.push(batch);
    }
    encode(&head, &schema, &batches)
}

/// Decodes a metric answer.
///
/// # Errors
/// A body that is not one.
pub fn decode_metrics(body: &[u8]) -> Result<MetricDelta, String> {
    let (head, batches) = decode(body)?;
    let mut samples: Vec<(Vec<i64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); head.series.len()];
    for b in &batches {
        let (Some(s), Some(t), Some(v)) = (b.column_by_name("series"), b.column_by_name("t"), b.column_by_name("v"))
        else {
            return Err("answer rows lack series, t or v".into());
        };
        let (s, t, v) =
            (s.as_primitive::<UInt32Type>(), t.as_primitive::<Int64Type>(), v.as_primitive::<Float64Type>());
        for i in 0..b.num_rows() {
            let slot = samples.get_mut(s.value(i) as usize).ok_or("answer row names a series it does not list")?;
            slot.0.push(t.value(i));
            slot.1.push(v.value(i));
        }
    }
    let series = head
        .series
        .into_iter()
        .zip(samples)
        .map(|(labels, (t, v))| SelectedSeries {
            labels: Arc::new(Labels::from_pairs(labels)),
            t: ScalarBuffer::from(t),
            v: ScalarBuffer::from(v),
        })
        .collect();
    Ok(MetricDelta { keep: head.keep.into_iter().collect(), series, deletes: head.deletes })
}

/// Decodes a log answer.
///
/// # Errors
/// A body that is not one.
pub fn decode_logs(body: &[u8]) -> Result<LogDelta, String> {
    let (head, batches) = decode(body)?;
    Ok(LogDelta {
        keep: head.keep.into_iter().collect(),
        streams: head.streams.into_iter().map(|(id, l)| (id, Arc::new(Labels::from_pairs(l)))).collect(),
        deletes: head.deletes,
        columns: LogColumns { labels: head.labels, fields: head.fields },
        batches: batches.into_iter().filter(|b| b.num_rows() > 0).collect(),
    })
}

/// Merges the samples a query node read itself with those its ingest node added: series by labels,
/// samples by time (an ingest node's sample for a timestamp the query node also read wins: it is the
/// newer write).
pub fn merge_series(mut local: Vec<SelectedSeries>, delta: Vec<SelectedSeries>) -> Vec<SelectedSeries> {
    let mut index: HashMap<Arc<Labels>, usize> = local.iter().enumerate().map(|(i, s)| (s.labels.clone(), i)).collect();
    for d in delta {
        let Some(&i) = index.get(&d.labels) else {
            index.insert(d.labels.clone(), local.len());
            local.push(d);
            continue;
        };
        let l = &local[i];
        let (mut t, mut v) = (Vec::with_capacity(l.t.len() + d.t.len()), Vec::with_capacity(l.t.len() + d.t.len()));
        let (mut a, mut b) = (0, 0);
        while a < l.t.len() || b < d.t.len() {
            let take_local = b >= d.t.len() || (a < l.t.len() && l.t[a] < d.t[b]);
            if take_local {
                t.push(l.t[a]);
                v.push(l.v[a]);
                a += 1;
            } else {
                if a < l.t.len() && l.t[a] == d.t[b] {
                    a += 1;
                }
                t.push(d.t[b]);
                v.push(d.v[b]);
                b += 1;
            }
        }
        local[i].t = ScalarBuffer::from(t);
        local[i].v = ScalarBuffer::from(v);
    }
    local
}

/// The ingest nodes a query node asks (`query.ingest_urls`).
pub struct Peers {
    urls: Vec<String>,
    client: reqwest::Client,
    timeout: Duration,
    metrics: PeerMetrics,
}

/// `lumen_query_ingest_*`: the query node's requests to its ingest nodes.
#[derive(Clone, Default)]
pub struct PeerMetrics {
    pub requests: prometheus_client::metrics::counter::Counter,
    pub failures: prometheus_client::metrics::counter::Counter,
    pub bytes: prometheus_client::metrics::counter::Counter,
}

impl PeerMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> PeerMetrics {
        let m = PeerMetrics::default();
        let r = registry.sub_registry_with_prefix("lumen_query_ingest");
        r.register(
            "requests",
            "requests of a query node to its ingest nodes for rows not in the bucket yet",
            m.requests.clone(),
        );
        r.register(
            "failures",
            "such requests that failed (the query answered from the bucket, with a warning)",
            m.failures.clone(),
        );
        r.register("bytes", "bytes of the ingest nodes' answers", m.bytes.clone());
        m
    }
}

impl Peers {
    pub fn new(urls: Vec<String>, client: reqwest::Client, timeout: Duration, metrics: PeerMetrics) -> Peers {
        let urls = urls.into_iter().map(|u| u.trim_end_matches('/').to_string()).collect();
        Peers { urls, client, timeout, metrics }
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Asks every ingest node at once; the first answer of the writer is taken (the others are dropped).
    /// Err: why none answered.
    async fn ask(
        &self,
        path: &str,
        auth: Option<&http::HeaderValue>,
        tenant: &Tenant,
        node: &str,
        body: Vec<u8>,
    ) -> Result<bytes::Bytes, AskError> {
        let asks = self.urls.iter().map(|url| {
            let mut req = self
                .client
                .post(format!("{url}{path}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(crate::http::TENANT_HEADER, tenant.as_str())
                .body(body.clone());
            if let Some(a) = auth {
                req = req.header(http::header::AUTHORIZATION, a.clone());
            }
            async move {
                let (status, bytes) = self.send(url, req, MAX_DELTA_ANSWER).await?;
                match status {
                    reqwest::StatusCode::CONFLICT => Ok(None),
                    // The writer refused the selection itself (a limit): the query fails with its words.
                    reqwest::StatusCode::BAD_REQUEST => Ok(Some(Err(excerpt(&bytes, 1000)))),
                    s if s.is_success() => Ok(Some(Ok(bytes))),
                    s => {
                        self.metrics.failures.inc();
                        Err(format!("{url}: {s}: {}", excerpt(&bytes, 300)))
                    }
                }
            }
        });
        let mut errors = Vec::new();
        // The writer's answer is taken as soon as it comes: a node that does not answer costs no wait.
        let mut pending: futures::stream::FuturesUnordered<_> = asks.collect();
        while let Some(answer) = futures::StreamExt::next(&mut pending).await {
            match answer {
                Ok(Some(Ok(bytes))) => return Ok(bytes),
                Ok(Some(Err(refused))) => return Err(AskError::Refused(refused)),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        Err(AskError::Unavailable(if errors.is_empty() && node.is_empty() {
            format!("none of {} holds the bucket's writer lease", self.urls.join(", "))
        } else if errors.is_empty() {
            format!("none of {} is the ingest node {node:?} holding its writer lease", self.urls.join(", "))
        } else {
            errors.join("; ")
        }))
    }
}

/// Why an ingest node's rows are not there.
enum AskError {
    /// No writer answered: the query goes on from the bucket, with a warning.
    Unavailable(String),
    /// The writer refused the selection (400: a limit such as `query.max_samples`): the query fails.
    Refused(String),
}

/// One query's calls to its ingest nodes: the caller's credential, and the warnings to pass on.
#[derive(Clone)]
pub struct PeerCall {
    pub peers: Arc<Peers>,
    pub auth: Option<http::HeaderValue>,
    pub warnings: Arc<Mutex<Vec<String>>>,
    /// Trees whose writer released its lease at a graceful stop (see [`TreeSet::retired`]): everything it
    /// acknowledged is in the bucket, so its node is not asked.
    pub retired: Arc<HashSet<String>>,
}

impl PeerCall {
    pub fn new(peers: Arc<Peers>, auth: Option<http::HeaderValue>) -> PeerCall {
        PeerCall { peers, auth, warnings: Arc::new(Mutex::new(Vec::new())), retired: Arc::default() }
    }

    /// Does not ask for the trees of `trees` that are retired.
    pub fn with_trees(mut self, trees: &TreeSet) -> PeerCall {
        self.retired = Arc::new(trees.retired.clone());
        self
    }

    /// Logs that no ingest node answered for `what`, and keeps the warning for the query's answer.
    pub fn warn(&self, what: &str, error: String) {
        tracing::warn!(%error, "query node: no ingest node answered for {what}; answering from the bucket alone");
        let w = format!(
            "no ingest node answered ({error}): {what} acknowledged since the bucket's last commit may be missing"
        );
        let mut ws = self.warnings.lock();
        if !ws.contains(&w) {
            ws.push(w);
        }
    }

    /// The warnings so far.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }

    /// The log rows an ingest node holds beyond `req.have`; None (and a warning) when none answered.
    ///
    /// # Errors
    /// The writer refused the selection (a limit): its message, for the query's 400.
    pub async fn logs(&self, tenant: &Tenant, req: &LogDeltaRequest) -> Result<Option<LogDelta>, String> {
        self.fetch(LOGS_PATH, tenant, req, &req.node, "lines", decode_logs).await
    }

    /// What the ingest node adds to `req`, a selection of this query node's `store`: the request names the
    /// parts the store would read, and the writer's pending deletes are applied to them at once
    /// ([`LogStore::adopt_peer_deletes`]). None (and a warning) when no ingest node answered.
    ///
    /// # Errors
    /// As [`PeerCall::logs`].
    pub async fn log_delta(&self, node: &str, store: &LogStore, req: &ScanRequest) -> Result<Option<LogDelta>, String> {
        let wire = LogDeltaRequest {
            start_ns: req.start_ns,
            end_ns: req.end_ns,
            matchers: req.matchers.iter().map(WireMatcher::from_store).collect(),
            line_contains: req.line_contains.clone(),
            columns: req.columns.clone(),
            stream_limit: req.stream_limit.map(|l| (l.rows, l.newest)),
            have: store.part_ids(&req.tenant, req.start_ns, req.end_ns),
            schema: false,
            node: node.to_string(),
        };
        let delta = self.logs(&req.tenant, &wire).await?;
        if let Some(d) = &delta {
            store.adopt_peer_deletes(&req.tenant, &d.deletes);
        }
        Ok(delta)
    }

    /// [`PeerCall::log_delta`] for every tree of `stores` (`(node, store)`), asked at once.
    ///
    /// # Errors
    /// As [`PeerCall::logs`].
    pub async fn log_deltas(
        &self,
        stores: &[(&str, &LogStore)],
        req: &ScanRequest,
    ) -> Result<Vec<Option<LogDelta>>, String> {
        let asks = stores.iter().map(|(node, store)| self.log_delta(node, store, req));
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// The tenant's label and field names on the ingest node; None (and a warning) when none answered.
    ///
    /// # Errors
    /// As [`PeerCall::logs`].
    pub async fn log_columns(&self, node: &str, tenant: &Tenant) -> Result<Option<LogColumns>, String> {
        let wire = LogDeltaRequest {
            start_ns: 0,
            end_ns: 0,
            matchers: Vec::new(),
            line_contains: Vec::new(),
            columns: Some(Vec::new()),
            stream_limit: None,
            have: Vec::new(),
            schema: true,
            node: node.to_string(),
        };
        Ok(self.logs(tenant, &wire).await?.map(|d| d.columns))
    }

    /// The samples an ingest node holds beyond `req.have`; None (and a warning) when none answered.
    ///
    /// # Errors
    /// As [`PeerCall::logs`].
    pub async fn metrics(&self, tenant: &Tenant, req: &MetricDeltaRequest) -> Result<Option<MetricDelta>, String> {
        self.fetch(METRICS_PATH, tenant, req, &req.node, "samples", decode_metrics).await
    }

    /// The ingest node's change mark and the earliest sample time it appended since `since`, for the results
    /// cache; None when no node answered (no warning: the query itself asks again, and warns).
    pub async fn metric_changes(
        &self,
        node: &str,
        tenant: &Tenant,
        since: Option<store::ChangeMark>,
    ) -> Option<ChangesAnswer> {
        let body = serde_json::to_vec(&ChangesRequest { node: node.to_string(), since }).ok()?;
        let bytes = self.peers.ask(METRIC_CHANGES_PATH, self.auth.as_ref(), tenant, node, body).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    async fn fetch<T>(
        &self,
        path: &str,
        tenant: &Tenant,
        req: &impl Serialize,
        node: &str,
        what: &str,
        decode: fn(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, String> {
        if self.retired.contains(node) {
            // Answered from the bucket alone, and rightly so: no warning.
            return Ok(None);
        }
        let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        match self.peers.ask(path, self.auth.as_ref(), tenant, node, body).await {
            Ok(b) => match decode(&b) {
                Ok(d) => Ok(Some(d)),
                Err(e) => {
                    self.warn(what, e);
                    Ok(None)
                }
            },
            Err(AskError::Unavailable(e)) => {
                self.warn(what, e);
                Ok(None)
            }
            Err(AskError::Refused(e)) => Err(format!("the ingest node refused the selection: {e}")),
        }
    }
}

/// Whether a route answers a set (label names, label values, series) that a query node completes with its
/// ingest nodes' answers to the same request (see [`union_metadata`]).
pub fn is_metadata_route(path: &str) -> bool {
    matches!(
        path,
        "/api/v1/labels" | "/api/v1/series" | "/loki/api/v1/labels" | "/loki/api/v1/label" | "/loki/api/v1/series"
    ) || ((path.starts_with("/api/v1/label/") || path.starts_with("/loki/api/v1/label/")) && path.ends_with("/values"))
}

/// Largest answer of an ingest node to a metadata request that is read.
const MAX_METADATA_ANSWER: usize = 64 << 20;
/// Largest delta answer that is read (the writer bounds its own by its `query.max_samples`).
const MAX_DELTA_ANSWER: usize = 1 << 30;

impl Peers {
    /// Sends the same request to every ingest node; the `data` arrays of those that answered, and why
    /// the others did not.
    pub async fn forward(
        &self,
        method: &http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
        body: bytes::Bytes,
    ) -> (Vec<Vec<serde_json::Value>>, Vec<String>) {
        let (mut found, mut errors) = (Vec::new(), Vec::new());
        for (url, answer) in self.broadcast(method, path_and_query, headers, body, MAX_METADATA_ANSWER).await {
            let got = answer.and_then(|(status, bytes)| {
                if !status.is_success() {
                    self.metrics.failures.inc();
                    return Err(format!("{url}: {status}: {}", excerpt(&bytes, 300)));
                }
                let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| format!("{url}: {e}"))?;
                match v.get("data") {
                    Some(serde_json::Value::Array(a)) => Ok(a.clone()),
                    _ => Err(format!("{url}: the answer has no data array")),
                }
            });
            match got {
                Ok(a) => found.push(a),
                Err(e) => errors.push(e),
            }
        }
        (found, errors)
    }

    /// Sends the same request (the caller's `Authorization`, `Content-Type` and tenant header with it) to
    /// every ingest node at once: each node's URL with its status and body, or why it gave none.
    pub async fn broadcast(
        &self,
        method: &http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
        body: bytes::Bytes,
        max: usize,
    ) -> Vec<(String, Result<(reqwest::StatusCode, bytes::Bytes), String>)> {
        let asks = self.urls.iter().map(|url| {
            let req = self.passing_on(method, url, path_and_query, headers).body(body.clone());
            async move { (url.clone(), self.send(url, req, max).await) }
        });
        futures::future::join_all(asks).await
    }

    /// A request to `url` with the caller's `Authorization`, `Content-Type` and tenant header.
    fn passing_on(
        &self,
        method: &http::Method,
        url: &str,
        path_and_query: &str,
        headers: &http::HeaderMap,
    ) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method.clone(), format!("{url}{path_and_query}"));
        for name in [http::header::AUTHORIZATION, http::header::CONTENT_TYPE] {
            if let Some(v) = headers.get(&name) {
                req = req.header(name, v.clone());
            }
        }
        if let Some(v) = headers.get(crate::http::TENANT_HEADER) {
            req = req.header(crate::http::TENANT_HEADER, v.clone());
        }
        req
    }

    /// Sends the request (as [`Self::broadcast`] does, with `extra` headers) to the ingest nodes one after
    /// the other until one answers with anything but a server error: that node's URL, status and body. Err:
    /// why none did.
    pub async fn first_answer(
        &self,
        method: &http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
        extra: &[(&'static str, String)],
        body: bytes::Bytes,
        max: usize,
    ) -> Result<(String, reqwest::StatusCode, bytes::Bytes), Vec<String>> {
        let mut errors = Vec::new();
        for url in &self.urls {
            let mut req = self.passing_on(method, url, path_and_query, headers);
            for (name, value) in extra {
                req = req.header(*name, value.as_str());
            }
            match self.send(url, req.body(body.clone()), max).await {
                Ok((status, b)) if !status.is_server_error() => return Ok((url.clone(), status, b)),
                Ok((status, b)) => errors.push(format!("{url}: {status}: {}", excerpt(&b, 300))),
                Err(e) => errors.push(e),
            }
        }
        Err(errors)
    }

    /// Sends one request to an ingest node and reads its answer, refusing one over `max` bytes as it
    /// arrives. Counts the request, the bytes of a 2xx answer, and a failure to get any answer.
    async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
        max: usize,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), String> {
        self.metrics.requests.inc();
        let answer = async {
            let mut resp = req.timeout(self.timeout).send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status();
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
                if body.len() + chunk.len() > max {
                    return Err(format!("{url}: answer over {max} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, body.freeze()))
        }
        .await;
        match &answer {
            Ok((status, body)) if status.is_success() => {
                self.metrics.bytes.inc_by(body.len() as u64);
            }
            Ok(_) => {}
            Err(_) => {
                self.metrics.failures.inc();
            }
        }
        answer
    }
}

/// The start of an answer's text, for a message.
fn excerpt(body: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&body[..body.len().min(max)]).trim().to_string()
}

/// On a query node, the label names, label values and series answers are sets: the node's own answer
/// from the bucket, completed with its ingest nodes' answers to the same request (what they hold that
/// is not synced yet: new streams and series). An ingest node that does not answer leaves a warning.
pub async fn union_metadata(
    axum::extract::State(state): axum::extract::State<crate::http::QueryState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(peers) = state.peers.clone() else {
        return next.run(req).await;
    };
    if !is_metadata_route(req.uri().path()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 8 << 20).await else {
        return (http::StatusCode::BAD_REQUEST, "cannot read the form body (at most 8388608 bytes)\n").into_response();
    };
    let path_and_query = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
    let (method, headers) = (parts.method.clone(), parts.headers.clone());
    let own = next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(body.clone()))).await;
    if !own.status().is_success() {
        return own;
    }
    let (answers, errors) = peers.forward(&method, &path_and_query, &headers, body).await;
    let Ok(own_body) = axum::body::to_bytes(own.into_body(), usize::MAX).await else {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "cannot read the answer\n").into_response();
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&own_body) else {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "the answer is not JSON\n").into_response();
    };
    if let Some(serde_json::Value::Array(data)) = v.get_mut("data") {
        let mut seen: HashSet<String> = data.iter().map(ToString::to_string).collect();
        for item in answers.into_iter().flatten() {
            if seen.insert(item.to_string()) {
                data.push(item);
            }
        }
        // Names and values come sorted; series in no promised order.
        if data.iter().all(serde_json::Value::is_string) {
            data.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        }
    }
    if !errors.is_empty() {
        let w = format!(
            "no ingest node answered ({}): names and series acknowledged since the bucket's last commit may be missing",
            errors.join("; ")
        );
        tracing::warn!(warning = %w, "query node");
        let warnings = v.as_object_mut().map(|o| o.entry("warnings").or_insert_with(|| serde_json::json!([])));
        if let Some(serde_json::Value::Array(ws)) = warnings {
            ws.push(serde_json::Value::String(w));
        }
    }
    axum::Json(v).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], t: &[i64], v: &[f64]) -> SelectedSeries {
        SelectedSeries {
            labels: Arc::new(Labels::from_pairs(labels.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect())),
            t: ScalarBuffer::from(t.to_vec()),
            v: ScalarBuffer::from(v.to_vec()),
        }
    }

    #[test]
    fn metric_answers_round_trip_with_nan_bits() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        let s = vec![
            series(&[("__name__", "up"), ("job", "a")], &[1, 2], &[1.0, stale]),
            series(&[("__name__", "x")], &[], &[]),
        ];
        let delete = store::delete::DeleteSpec {
            query: "up{job=\"a\"}".into(),
            matchers: vec![vec![("job".into(), "=".into(), "a".into())]],
            line_filters: Vec::new(),
            start_ns: 1,
            end_ns: 2,
        };
        let body = encode_metrics(vec![3, 7], &s, vec![delete.clone()]).unwrap();
        let d = decode_metrics(&body).unwrap();
        assert_eq!(d.keep, HashSet::from([3, 7]));
        assert_eq!(d.deletes, [delete]);
        assert_eq!(d.series.len(), 2);
        assert_eq!(d.series[0].labels, s[0].labels);
        assert_eq!(&d.series[0].t[..], &[1, 2]);
        assert_eq!(d.series[0].v[1].to_bits(), stale.to_bits());
        assert!(d.series[1].t.is_empty());
        assert!(decode(&body[..3]).is_err());
    }

    #[test]
    fn merged_series_keep_time_order_and_the_ingest_nodes_sample_wins() {
        let local = vec![series(&[("a", "1")], &[1, 3, 5], &[1.0, 3.0, 5.0]), series(&[("a", "2")], &[1], &[9.0])];
        let delta = vec![series(&[("a", "1")], &[2, 5, 6], &[2.0, 50.0, 6.0]), series(&[("a", "3")], &[4], &[4.0])];
        let out = merge_series(local, delta);
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0].t[..], &[1, 2, 3, 5, 6]);
        assert_eq!(&out[0].v[..], &[1.0, 2.0, 3.0, 50.0, 6.0]);
        assert_eq!(&out[1].t[..], &[1]);
        assert_eq!(&out[2].t[..], &[4]);
    }

    #[test]
    fn matchers_cross_the_wire_unchanged() {
        for op in [MatchOp::Eq, MatchOp::Neq, MatchOp::Re, MatchOp::Nre] {
            let m = LabelMatcher::new("job", op, "a.*").unwrap();
            let back = WireMatcher::from_store(&m).to_store().unwrap();
            assert_eq!((back.name.as_str(), back.op, back.value.as_str()), ("job", op, "a.*"));
        }
        assert!(WireMatcher { name: "a".into(), op: "<".into(), value: String::new() }.to_store().is_err());
    }
}
