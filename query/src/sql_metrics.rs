//! SQL over the metric store (issue 21 §5): the tables `samples` and `series` of one tenant, beside
//! `logs`, so one query can join log lines with metric samples.
//!
//! - `samples`: `time` (the same type as `logs.time`), `value`, `metric` (the series' `__name__`),
//!   `labels` (a map of every label but `__name__`), and one column per label name the tenant has (a label
//!   named `time`, `value`, `metric` or `labels` gets the suffix `_label`, as in `logs`). One row per
//!   sample, stale markers left out.
//! - `series`: the catalog: `metric`, `labels` and the label columns, one row per series.
//!
//! Bounds on `time`, equality on `metric` and on label columns are pushed down (inexact) to the store's
//! postings and parts, as `logs` does; without them every series is read. One scan loads at most half of
//! `query.sql_max_memory` in samples (16 bytes each) before DataFusion sees them, then hands them over in
//! batches of 8,192 rows: past that the query fails with a message naming the limit and how to narrow
//! the query.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Float64Builder, MapBuilder, MapFieldNames, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};

use crate::sql::column_op_literal;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use store::model::{Labels, Tenant};
use store::{LabelMatcher, MatchOp, MetricStore};

/// Rows per record batch handed to DataFusion.
const BATCH_ROWS: usize = 8192;
/// Columns every metric table has before its label columns.
const FIXED: [&str; 4] = ["time", "value", "metric", "labels"];

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Samples,
    Series,
}

/// `samples` or `series` of one tenant.
#[derive(Debug)]
pub struct MetricTable {
    store: MetricStore,
    tenant: Tenant,
    kind: Kind,
    schema: SchemaRef,
    /// (column, label name), for the label columns.
    label_columns: Vec<(String, String)>,
    max_samples: usize,
    fed: Federation,
}

/// On a query node (issue 22): the trees read and the ingest nodes asked, as PromQL there does.
#[derive(Clone, Default)]
struct Federation {
    trees: crate::peers::TreeSet,
    peers: Option<(crate::peers::PeerCall, tokio::runtime::Handle)>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation").field("trees", &self.trees.others.len()).finish_non_exhaustive()
    }
}

fn map_type() -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(
            vec![Field::new("keys", DataType::Utf8, false), Field::new("values", DataType::Utf8, true)].into(),
        ),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// A label's column name.
pub fn column_of(label: &str) -> String {
    if FIXED.contains(&label) { format!("{label}_label") } else { label.to_string() }
}

impl MetricTable {
    /// The table over the tenant's series as they are now. `max_samples` bounds one scan.
    pub fn new(store: MetricStore, tenant: Tenant, kind: Kind, max_samples: usize) -> MetricTable {
        let names: BTreeSet<String> =
            store.label_names(&tenant, &[], i64::MIN, i64::MAX).unwrap_or_default().into_iter().collect();
        let label_columns: Vec<(String, String)> =
            names.into_iter().filter(|n| n != "__name__").map(|n| (column_of(&n), n)).collect();
        let mut fields = Vec::new();
        if kind == Kind::Samples {
            fields.push(Field::new("time", store::time_type(), false));
            fields.push(Field::new("value", DataType::Float64, false));
        }
        fields.push(Field::new("metric", DataType::Utf8, false));
        fields.push(Field::new("labels", map_type(), false));
        fields.extend(label_columns.iter().map(|(c, _)| Field::new(c, DataType::Utf8, true)));
        let schema = Arc::new(Schema::new(fields));
        MetricTable { store, tenant, kind, schema, label_columns, max_samples, fed: Federation::default() }
    }

    /// On a query node: reads every tree of `trees`, and, for `samples`, asks `peers` for what each tree's
    /// node has not synced (as PromQL there does). The trees' label names join the label columns.
    pub fn with_trees(
        mut self,
        trees: crate::peers::TreeSet,
        peers: Option<(crate::peers::PeerCall, tokio::runtime::Handle)>,
    ) -> MetricTable {
        let mut names: BTreeSet<String> = self.label_columns.iter().map(|(_, n)| n.clone()).collect();
        for (_, store) in trees.metric_stores(&self.store) {
            names.extend(store.label_names(&self.tenant, &[], i64::MIN, i64::MAX).unwrap_or_default());
        }
        names.remove("__name__");
        let fresh = MetricTable::new(self.store.clone(), self.tenant.clone(), self.kind, self.max_samples);
        let mut fields: Vec<Field> = fresh.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.retain(|f| FIXED.contains(&f.name().as_str()));
        self.label_columns = names.into_iter().map(|n| (column_of(&n), n)).collect();
        fields.extend(self.label_columns.iter().map(|(c, _)| Field::new(c, DataType::Utf8, true)));
        self.schema = Arc::new(Schema::new(fields));
        self.fed = Federation { trees, peers };
        self
    }

    fn label_of<'a>(&'a self, column: &str) -> Option<&'a str> {
        if column == "metric" {
            return Some("__name__");
        }
        self.label_columns.iter().find(|(c, _)| c == column).map(|(_, l)| l.as_str())
    }

    /// Applies what the store can use of `expr`; true when it could use it.
    fn push_down(&self, expr: &Expr, req: &mut Req) -> bool {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    let l = self.push_down(left, req);
                    let r = self.push_down(right, req);
                    return l || r;
                }
                let Some((col, op, lit)) = column_op_literal(left, *op, right) else {
                    return false;
                };
                if col == "time" && self.kind == Kind::Samples {
                    let Some(ms) = timestamp_ms(lit) else { return false };
                    match op {
                        // Whole milliseconds: a bound inside a millisecond keeps that millisecond (inexact).
                        Operator::Gt | Operator::GtEq => req.mint = req.mint.max(ms.0),
                        Operator::Lt | Operator::LtEq => req.maxt = req.maxt.min(ms.1),
                        Operator::Eq => {
                            req.mint = req.mint.max(ms.0);
                            req.maxt = req.maxt.min(ms.1);
                        }
                        _ => return false,
                    }
                    return true;
                }
                if op == Operator::Eq
                    && let (Some(label), ScalarValue::Utf8(Some(v)) | ScalarValue::Utf8View(Some(v))) =
                        (self.label_of(col), lit)
                    && let Ok(m) = LabelMatcher::new(label, MatchOp::Eq, v.clone())
                {
                    req.matchers.push(m);
                    return true;
                }
                false
            }
            Expr::Between(b) if !b.negated && self.kind == Kind::Samples => {
                let (Expr::Column(c), Expr::Literal(lo, _), Expr::Literal(hi, _)) =
                    (b.expr.as_ref(), b.low.as_ref(), b.high.as_ref())
                else {
                    return false;
                };
                match (c.name == "time", timestamp_ms(lo), timestamp_ms(hi)) {
                    (true, Some(lo), Some(hi)) => {
                        req.mint = req.mint.max(lo.0);
                        req.maxt = req.maxt.min(hi.1);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// The millisecond range a timestamp literal falls in: (floor, ceil).
fn timestamp_ms(v: &ScalarValue) -> Option<(i64, i64)> {
    let ns = crate::sql::timestamp_ns(v)?;
    Some((ns.div_euclid(1_000_000), (ns + 999_999).div_euclid(1_000_000)))
}

/// What one scan asks of the store.
#[derive(Debug, Clone)]
struct Req {
    matchers: Vec<LabelMatcher>,
    mint: i64,
    maxt: i64,
}

impl Req {
    fn all() -> Req {
        Req { matchers: Vec::new(), mint: i64::MIN, maxt: i64::MAX }
    }
}

#[async_trait]
impl TableProvider for MetricTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.push_down(f, &mut Req::all()) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut req = Req::all();
        for f in filters {
            self.push_down(f, &mut req);
        }
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let partition = Arc::new(MetricPartition {
            store: self.store.clone(),
            tenant: self.tenant.clone(),
            kind: self.kind,
            req,
            schema: schema.clone(),
            label_columns: self.label_columns.clone(),
            max_samples: self.max_samples,
            fed: self.fed.clone(),
        });
        Ok(Arc::new(StreamingTableExec::try_new(schema, vec![partition], None, [], false, limit)?))
    }
}

struct MetricPartition {
    store: MetricStore,
    tenant: Tenant,
    kind: Kind,
    req: Req,
    schema: SchemaRef,
    label_columns: Vec<(String, String)>,
    max_samples: usize,
    fed: Federation,
}

impl std::fmt::Debug for MetricPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricPartition")
            .field("tenant", &self.tenant)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Builds record batches of the projected columns, row by row.
struct Rows<'a> {
    schema: &'a SchemaRef,
    time: TimestampNanosecondBuilder,
    value: Float64Builder,
    metric: StringBuilder,
    labels: MapBuilder<StringBuilder, StringBuilder>,
    cols: Vec<(String, StringBuilder)>,
    n: usize,
}

impl<'a> Rows<'a> {
    fn new(schema: &'a SchemaRef, label_columns: &'a [(String, String)]) -> Rows<'a> {
        let names = MapFieldNames { entry: "entries".into(), key: "keys".into(), value: "values".into() };
        let cols = schema
            .fields()
            .iter()
            .filter(|f| !FIXED.contains(&f.name().as_str()))
            .filter_map(|f| {
                label_columns.iter().find(|(c, _)| c == f.name()).map(|(_, l)| (l.clone(), StringBuilder::new()))
            })
            .collect();
        Rows {
            schema,
            time: TimestampNanosecondBuilder::new().with_timezone("UTC"),
            value: Float64Builder::new(),
            metric: StringBuilder::new(),
            labels: MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new()),
            cols,
            n: 0,
        }
    }

    fn wants(&self, column: &str) -> bool {
        self.schema.fields().iter().any(|f| f.name() == column)
    }

    /// One series of the catalog.
    fn push(&mut self, labels: &Labels) {
        self.push_samples(labels, &[], &[], true);
    }

    /// The samples of one series (stale markers skipped) from `from`, at most up to a full batch; returns
    /// how many positions it consumed. With `catalog`, one row without time and value.
    fn push_samples(&mut self, labels: &Labels, t: &[i64], v: &[f64], catalog: bool) -> usize {
        let (want_time, want_value, want_metric, want_labels) =
            (self.wants("time"), self.wants("value"), self.wants("metric"), self.wants("labels"));
        // The label values are the same for every row of the series: looked up once.
        let metric = labels.get("__name__").unwrap_or("");
        let values: Vec<Option<&str>> = self.cols.iter().map(|(l, _)| labels.get(l)).collect();
        let row = |me: &mut Rows| {
            if want_metric {
                me.metric.append_value(metric);
            }
            if want_labels {
                for (k, v) in labels.iter().filter(|(k, _)| *k != "__name__") {
                    me.labels.keys().append_value(k);
                    me.labels.values().append_value(v);
                }
                let _ = me.labels.append(true);
            }
            for ((_, b), v) in me.cols.iter_mut().zip(&values) {
                b.append_option(*v);
            }
            me.n += 1;
        };
        if catalog {
            row(self);
            return 0;
        }
        let mut i = 0;
        while i < t.len() && self.n < BATCH_ROWS {
            if !crate::promql::is_stale_nan(v[i]) {
                if want_time {
                    self.time.append_value(t[i].saturating_mul(1_000_000));
                }
                if want_value {
                    self.value.append_value(v[i]);
                }
                row(self);
            }
            i += 1;
        }
        i
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        let mut time = Some(Arc::new(self.time.finish()) as ArrayRef);
        let mut value = Some(Arc::new(self.value.finish()) as ArrayRef);
        let mut metric = Some(Arc::new(self.metric.finish()) as ArrayRef);
        let mut labels = Some(Arc::new(self.labels.finish()) as ArrayRef);
        let mut cols: Vec<Option<ArrayRef>> =
            self.cols.iter_mut().map(|(_, b)| Some(Arc::new(b.finish()) as ArrayRef)).collect();
        let mut next_col = 0;
        for f in self.schema.fields() {
            let a = match f.name().as_str() {
                "time" => time.take(),
                "value" => value.take(),
                "metric" => metric.take(),
                "labels" => labels.take(),
                _ => {
                    next_col += 1;
                    cols.get_mut(next_col - 1).and_then(Option::take)
                }
            };
            arrays.push(a.ok_or_else(|| DataFusionError::Internal(format!("no column {}", f.name())))?);
        }
        self.n = 0;
        if arrays.is_empty() {
            // A projection of no columns (`SELECT count(*)`): rows without columns.
            return RecordBatch::try_new_with_options(
                self.schema.clone(),
                arrays,
                &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(0)),
            )
            .map_err(Into::into);
        }
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(Into::into)
    }
}

impl MetricPartition {
    /// Reads the scan and sends its batches as they fill (on a blocking thread). Stops when the receiver
    /// is gone (the query ended or was cancelled).
    fn produce(&self, tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>) -> Result<()> {
        let mut matchers = self.req.matchers.clone();
        if matchers.is_empty() {
            matchers.push(
                LabelMatcher::new("__name__", MatchOp::Re, ".+").map_err(|e| DataFusionError::External(Box::new(e)))?,
            );
        }
        let mut rows = Rows::new(&self.schema, &self.label_columns);
        let no_columns = self.schema.fields().is_empty();
        // Sends what `rows` holds; false when nobody listens any more.
        let send = |rows: &mut Rows| -> Result<bool> {
            let batch = if no_columns {
                let n = std::mem::take(&mut rows.n);
                RecordBatch::try_new_with_options(
                    self.schema.clone(),
                    Vec::new(),
                    &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
                )?
            } else {
                rows.finish()?
            };
            Ok(tx.blocking_send(Ok(batch)).is_ok())
        };
        match self.kind {
            Kind::Series => {
                // Every tree's catalog; a series written through several ingest nodes is in each.
                let stores = self.fed.trees.metric_stores(&self.store);
                let mut found = Vec::new();
                for (_, store) in &stores {
                    found.extend(
                        store
                            .series(&self.tenant, std::slice::from_ref(&matchers), self.req.mint, self.req.maxt)
                            .map_err(|e| DataFusionError::External(Box::new(e)))?,
                    );
                }
                // On a query node, what the ingest nodes hold and have not synced: a new series is in
                // their heads and in no tree's catalog yet.
                if let Some((call, handle)) = &self.fed.peers {
                    found.extend(peer_series(call, handle, &self.tenant, &matchers, self.req.mint, self.req.maxt));
                }
                if stores.len() > 1 || self.fed.peers.is_some() {
                    found.sort();
                    found.dedup();
                }
                for l in found {
                    rows.push(&l);
                    if rows.n >= BATCH_ROWS && !send(&mut rows)? {
                        return Ok(());
                    }
                }
            }
            Kind::Samples => {
                let too_many = || {
                    DataFusionError::ResourcesExhausted(format!(
                        "the query reads more than {} samples of the metric store (half of \
                         query.sql_max_memory at 16 bytes a sample; the other half is the query's own): \
                         narrow it with time bounds (WHERE time >= ...), metric = '...' or a label column = '...'",
                        self.max_samples
                    ))
                };
                let found = if self.fed.peers.is_none() && self.fed.trees.others.is_empty() {
                    self.store
                        .select_within(&self.tenant, &matchers, self.req.mint, self.req.maxt, self.max_samples)
                        .map_err(|e| match e {
                            store::Error::TooManySamples { .. } => too_many(),
                            e => DataFusionError::External(Box::new(e)),
                        })?
                } else {
                    // As PromQL on this node reads: every tree, and what each tree's node has not synced.
                    let source = crate::http::prom::StoreSource {
                        store: &self.store,
                        tenant: &self.tenant,
                        max_samples: self.max_samples,
                        peers: self.fed.peers.clone(),
                        trees: self.fed.trees.clone(),
                    };
                    source.select_series(&matchers, self.req.mint, self.req.maxt).map_err(|e| match e {
                        crate::promql::EvalError::Execution(m) => DataFusionError::Execution(m),
                        _ => too_many(),
                    })?
                };
                for s in found {
                    let mut from = 0;
                    while from < s.t.len() {
                        from += rows.push_samples(&s.labels, &s.t[from..], &s.v[from..], false);
                        if rows.n >= BATCH_ROWS && !send(&mut rows)? {
                            return Ok(());
                        }
                    }
                }
            }
        }
        if rows.n > 0 {
            send(&mut rows)?;
        }
        Ok(())
    }
}

/// The series the ingest nodes hold for `matchers` over `[mint, maxt]` (ms; unbounded ends are not sent):
/// their answers to the same selection through `/api/v1/series`, which a query node's `series` table
/// adds to its trees' catalogs. A node that does not answer, or matchers a selector cannot name, leave the
/// query's warning instead.
fn peer_series(
    call: &crate::peers::PeerCall,
    handle: &tokio::runtime::Handle,
    tenant: &Tenant,
    matchers: &[LabelMatcher],
    mint: i64,
    maxt: i64,
) -> Vec<Arc<Labels>> {
    let Some(selector) = selector_text(matchers) else {
        call.warn("series", "a label name of the selection cannot be sent in a selector".to_string());
        return Vec::new();
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("match[]", &selector);
    let seconds = |ms: i64| format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
    if mint > i64::MIN {
        query.append_pair("start", &seconds(mint));
    }
    if maxt < i64::MAX {
        query.append_pair("end", &seconds(maxt));
    }
    let mut headers = http::HeaderMap::new();
    if let Some(auth) = &call.auth {
        headers.insert(http::header::AUTHORIZATION, auth.clone());
    }
    if let Ok(v) = http::HeaderValue::from_str(tenant.as_str()) {
        headers.insert(crate::http::TENANT_HEADER, v);
    }
    let path = format!("/api/v1/series?{}", query.finish());
    let (answers, errors) =
        handle.block_on(call.peers.forward(&http::Method::GET, &path, &headers, bytes::Bytes::new()));
    for e in errors {
        call.warn("series", e);
    }
    answers
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let pairs: Vec<(String, String)> =
                v.as_object()?.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect();
            Some(Arc::new(Labels::from_pairs(pairs)))
        })
        .collect()
}

/// A PromQL selector of `matchers` (`{a="b",c=~"d.*"}`), or None when a label name is not a plain one.
fn selector_text(matchers: &[LabelMatcher]) -> Option<String> {
    let plain = |n: &str| {
        let mut chars = n.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let mut parts = Vec::with_capacity(matchers.len());
    for m in matchers {
        if !plain(&m.name) {
            return None;
        }
        // A JSON string is a valid PromQL double-quoted string: the same escapes.
        parts.push(format!("{}{}{}", m.name, m.op.symbol(), serde_json::to_string(&m.value).ok()?));
    }
    Some(format!("{{{}}}", parts.join(",")))
}

impl PartitionStream for MetricPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let me = MetricPartition {
            store: self.store.clone(),
            tenant: self.tenant.clone(),
            kind: self.kind,
            req: self.req.clone(),
            schema: self.schema.clone(),
            label_columns: self.label_columns.clone(),
            max_samples: self.max_samples,
            fed: self.fed.clone(),
        };
        // Two batches in flight at most: the reader waits for the query to take them.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = me.produce(&tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The selector a query node sends its ingest nodes for the `series` table parses back to the same
    /// matchers, whatever the values hold.
    #[test]
    fn selectors_for_the_ingest_nodes_parse_back_to_the_same_matchers() {
        let ms = vec![
            LabelMatcher::new("__name__", MatchOp::Re, "up|node_.+").unwrap(),
            LabelMatcher::new("job", MatchOp::Eq, "a \"quoted\" \\ back\nslash").unwrap(),
            LabelMatcher::new("env", MatchOp::Neq, "").unwrap(),
            LabelMatcher::new("path", MatchOp::Nre, "/api/.*").unwrap(),
        ];
        let text = selector_text(&ms).unwrap();
        let expr = promql_parser::parser::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let promql_parser::parser::Expr::VectorSelector(sel) = expr else { panic!("{text}: not a selector") };
        let op = |m: &promql_parser::label::MatchOp| match m {
            promql_parser::label::MatchOp::Equal => MatchOp::Eq,
            promql_parser::label::MatchOp::NotEqual => MatchOp::Neq,
            promql_parser::label::MatchOp::Re(_) => MatchOp::Re,
            promql_parser::label::MatchOp::NotRe(_) => MatchOp::Nre,
        };
        let mut back: Vec<(String, MatchOp, String)> =
            sel.matchers.matchers.iter().map(|m| (m.name.clone(), op(&m.op), m.value.clone())).collect();
        if let Some(name) = &sel.name {
            back.insert(0, ("__name__".to_string(), MatchOp::Eq, name.clone()));
        }
        back.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want: Vec<(String, MatchOp, String)> =
            ms.iter().map(|m| (m.name.clone(), m.op, m.value.clone())).collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back, want, "{text}");
        assert!(selector_text(&[LabelMatcher::new("a.b", MatchOp::Eq, "x").unwrap()]).is_none());
    }
}
