//! SQL over the stores: the table `logs` of one tenant (here) and its metric tables `samples` and `series`
//! ([`crate::sql_metrics`]), answered by DataFusion.
//!
//! [`LogsTable`] hands DataFusion a single streaming partition fed by [`LogStore::scan`]. Filters that the
//! store's indexes can use are pushed down as *inexact* (DataFusion still applies them): bounds on
//! `time`, equality on a label column, and `message LIKE '%text%'`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use store::model::Tenant;
use store::{LabelMatcher, LogStore, MatchOp, MetricStore, ScanRequest};

use crate::sql_metrics::{Kind, MetricTable};

/// A query node's ingest node, for one SQL query: the call, and the tenant's log columns it knows.
pub struct SqlPeers {
    pub call: crate::peers::PeerCall,
    pub columns: crate::peers::LogColumns,
}

/// The `logs` table of one tenant.
pub struct LogsTable {
    store: LogStore,
    tenant: Tenant,
    schema: SchemaRef,
    label_columns: Vec<(String, String)>,
    /// On a query node: the ingest node asked for the rows its parts do not hold (issue 22).
    peers: Option<crate::peers::PeerCall>,
    /// On a query node over several ingest nodes: the trees read (see [`crate::peers::TreeSet`]).
    trees: crate::peers::TreeSet,
}

impl std::fmt::Debug for LogsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogsTable").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl LogsTable {
    pub fn new(store: LogStore, tenant: Tenant) -> LogsTable {
        let schema = store.schema(&tenant);
        let label_columns =
            store.label_names(&tenant).into_iter().map(|name| (store::label_column(&name), name)).collect();
        LogsTable { store, tenant, schema, label_columns, peers: None, trees: crate::peers::TreeSet::default() }
    }

    /// Reads the trees of `trees` (a query node over several ingest nodes): their columns join the
    /// schema.
    pub fn with_trees(mut self, trees: crate::peers::TreeSet) -> LogsTable {
        let mut fields: Vec<datafusion::arrow::datatypes::Field> =
            if trees.root { self.schema.fields().iter().map(|f| f.as_ref().clone()).collect() } else { Vec::new() };
        if !trees.root {
            self.label_columns.clear();
        }
        for tree in trees.others.iter() {
            for f in tree.logs.schema(&self.tenant).fields() {
                if !fields.iter().any(|known| known.name() == f.name()) {
                    fields.push(f.as_ref().clone());
                }
            }
            for name in tree.logs.label_names(&self.tenant) {
                let column = store::label_column(&name);
                if self.label_of(&column).is_none() {
                    self.label_columns.push((column, name));
                }
            }
        }
        if fields.is_empty() {
            fields = self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        }
        self.schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        self.trees = trees;
        self
    }

    /// Reads, besides this node's parts, what the ingest node holds beyond them (a query node), with the
    /// label and field columns it knows and the bucket does not yet.
    pub fn with_peers(mut self, peers: Option<SqlPeers>) -> LogsTable {
        let Some(p) = peers else { return self };
        let mut fields: Vec<datafusion::arrow::datatypes::Field> =
            self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        let known =
            |fields: &[datafusion::arrow::datatypes::Field], name: &str| fields.iter().any(|f| f.name() == name);
        for label in &p.columns.labels {
            let column = store::label_column(label);
            if !known(&fields, &column) {
                fields.push(datafusion::arrow::datatypes::Field::new(
                    &column,
                    datafusion::arrow::datatypes::DataType::Utf8,
                    true,
                ));
            }
            if self.label_of(&column).is_none() {
                self.label_columns.push((column, label.clone()));
            }
        }
        for field in &p.columns.fields {
            if !known(&fields, field) {
                fields.push(datafusion::arrow::datatypes::Field::new(
                    field,
                    datafusion::arrow::datatypes::DataType::Utf8,
                    true,
                ));
            }
        }
        self.schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        self.peers = Some(p.call);
        self
    }

    fn label_of(&self, column: &str) -> Option<&str> {
        self.label_columns.iter().find(|(c, _)| c == column).map(|(_, l)| l.as_str())
    }

    /// A field column (not time, stream id, message or a label).
    fn is_field(&self, column: &str) -> bool {
        !matches!(column, store::TIME | store::STREAM_ID | store::MESSAGE)
            && self.label_of(column).is_none()
            && self.schema.field_with_name(column).is_ok()
    }

    /// The field that `expr` needs a value in to be true: a comparison, LIKE or regex match of a field with
    /// a non-null literal, or `field IS NOT NULL`. A row without the field makes such a filter null.
    fn needed_field<'a>(&self, expr: &'a Expr) -> Option<&'a str> {
        let column = match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                use Operator::*;
                let null_rejecting = matches!(
                    op,
                    Eq | NotEq
                        | Lt
                        | LtEq
                        | Gt
                        | GtEq
                        | IsNotDistinctFrom
                        | RegexMatch
                        | RegexIMatch
                        | RegexNotMatch
                        | RegexNotIMatch
                        | LikeMatch
                        | ILikeMatch
                        | NotLikeMatch
                        | NotILikeMatch
                );
                let (col, _, lit) = column_op_literal(left, *op, right)?;
                (null_rejecting && !lit.is_null()).then_some(col)?
            }
            Expr::Like(like) => match (like.expr.as_ref(), like.pattern.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) if !v.is_null() => c.name.as_str(),
                _ => return None,
            },
            Expr::IsNotNull(e) => match e.as_ref() {
                Expr::Column(c) => c.name.as_str(),
                _ => return None,
            },
            _ => return None,
        };
        self.is_field(column).then_some(column)
    }

    /// Applies what the store can use of `expr` to `req`; true when it could use it.
    fn push_down(&self, expr: &Expr, req: &mut ScanRequest) -> bool {
        if let Some(field) = self.needed_field(expr) {
            // Parts without the field are not read; the filter itself runs on the rows (`Inexact`).
            if !req.fields_present.iter().any(|f| f == field) {
                req.fields_present.push(field.to_string());
            }
            return true;
        }
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
                if col == store::TIME {
                    let Some(ns) = timestamp_ns(lit) else {
                        return false;
                    };
                    match op {
                        Operator::Gt => req.start_ns = req.start_ns.max(ns.saturating_add(1)),
                        Operator::GtEq => req.start_ns = req.start_ns.max(ns),
                        Operator::Lt => req.end_ns = req.end_ns.min(ns),
                        Operator::LtEq => req.end_ns = req.end_ns.min(ns.saturating_add(1)),
                        Operator::Eq => {
                            req.start_ns = req.start_ns.max(ns);
                            req.end_ns = req.end_ns.min(ns.saturating_add(1));
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
            Expr::Like(like) if !like.negated && !like.case_insensitive && like.escape_char.is_none() => {
                let (Expr::Column(c), Expr::Literal(ScalarValue::Utf8(Some(p)) | ScalarValue::Utf8View(Some(p)), _)) =
                    (like.expr.as_ref(), like.pattern.as_ref())
                else {
                    return false;
                };
                if c.name != store::MESSAGE {
                    return false;
                }
                // Only '%literal%' with no wildcard inside is a plain substring search.
                let inner = p.strip_prefix('%').and_then(|s| s.strip_suffix('%'));
                match inner {
                    Some(s) if !s.is_empty() && !s.contains(['%', '_', '\\']) => {
                        req.line_contains.push(s.to_string());
                        true
                    }
                    _ => false,
                }
            }
            Expr::Between(b) if !b.negated => {
                let Expr::Column(c) = b.expr.as_ref() else {
                    return false;
                };
                let (Expr::Literal(lo, _), Expr::Literal(hi, _)) = (b.low.as_ref(), b.high.as_ref()) else {
                    return false;
                };
                match (c.name == store::TIME, timestamp_ns(lo), timestamp_ns(hi)) {
                    (true, Some(lo), Some(hi)) => {
                        req.start_ns = req.start_ns.max(lo);
                        req.end_ns = req.end_ns.min(hi.saturating_add(1));
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// `column op literal` (or `literal op column`, the operator turned around), as filters are written.
pub(crate) fn column_op_literal<'a>(
    left: &'a Expr,
    op: Operator,
    right: &'a Expr,
) -> Option<(&'a str, Operator, &'a ScalarValue)> {
    match (left, right) {
        (Expr::Column(c), Expr::Literal(v, _)) => Some((c.name.as_str(), op, v)),
        (Expr::Literal(v, _), Expr::Column(c)) => Some((c.name.as_str(), op.swap()?, v)),
        _ => None,
    }
}

/// A timestamp literal in nanoseconds since the epoch.
pub(crate) fn timestamp_ns(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for LogsTable {
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
                let mut probe = ScanRequest::all(self.tenant.clone());
                if self.push_down(f, &mut probe) {
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
        let mut req = ScanRequest::all(self.tenant.clone());
        for f in filters {
            self.push_down(f, &mut req);
        }
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        req.columns = Some(schema.fields().iter().map(|f| f.name().clone()).collect());
        let mut partitions: Vec<Arc<dyn PartitionStream>> = Vec::new();
        let stores = self.trees.log_stores(&self.store);
        // A query node: it reads the parts each tree's node still holds, each node sends the rest.
        let deltas = match &self.peers {
            Some(peers) => peers.log_deltas(&stores, &req).await.map_err(DataFusionError::Plan)?,
            None => stores.iter().map(|_| None).collect(),
        };
        for ((_, store), delta) in stores.into_iter().zip(deltas) {
            let mut req = req.clone();
            if let Some(d) = delta {
                req.parts = store::PartFilter::Only(Arc::new(d.keep));
                let batches = d.batches.iter().map(|b| conform_to(b, &schema)).collect::<Result<Vec<_>>>()?;
                partitions.push(Arc::new(Rows { schema: schema.clone(), batches }));
            }
            partitions.push(Arc::new(ScanPartition { store: store.clone(), req, schema: schema.clone() }));
        }
        if partitions.is_empty() {
            partitions.push(Arc::new(Rows { schema: schema.clone(), batches: Vec::new() }));
        }
        Ok(Arc::new(StreamingTableExec::try_new(schema, partitions, None, [], false, limit)?))
    }
}

/// `batch` (an ingest node's rows of the columns `schema` names, in that order) in exactly `schema`'s
/// types.
fn conform_to(
    batch: &datafusion::arrow::record_batch::RecordBatch,
    schema: &SchemaRef,
) -> Result<datafusion::arrow::record_batch::RecordBatch> {
    use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
    if batch.num_columns() != schema.fields().len() {
        return Err(DataFusionError::Execution(format!(
            "the ingest node answered {} columns where {} were asked for",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                datafusion::arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}

/// Rows already in memory (an ingest node's answer), as one partition.
#[derive(Debug)]
struct Rows {
    schema: SchemaRef,
    batches: Vec<datafusion::arrow::record_batch::RecordBatch>,
}

impl PartitionStream for Rows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches: Vec<Result<_>> = self.batches.iter().cloned().map(Ok).collect();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures::stream::iter(batches)))
    }
}

/// One streaming partition: a store scan.
struct ScanPartition {
    store: LogStore,
    req: ScanRequest,
    schema: SchemaRef,
}

impl std::fmt::Debug for ScanPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanPartition").field("tenant", &self.req.tenant).finish_non_exhaustive()
    }
}

impl PartitionStream for ScanPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let stream = match self.store.scan(self.req.clone()) {
            Ok(scan) => scan.stream.map(|r| r.map_err(|e| DataFusionError::External(Box::new(e)))).boxed(),
            Err(e) => futures::stream::once(async move { Err(DataFusionError::External(Box::new(e))) }).boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// What `/api/v1/sql` may run: read-only queries. DDL (`CREATE [EXTERNAL] TABLE`, `DROP`, views), DML
/// (`INSERT`, `COPY ... TO`) and statements (`SET`, `PREPARE`, transactions) are refused, so no query can
/// read or write a file or change the session.
pub fn read_only() -> SQLOptions {
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false)
}

/// The message of a refused statement.
pub const READ_ONLY: &str = "only read-only queries are allowed (SELECT, WITH, VALUES, EXPLAIN); DDL (CREATE, \
    DROP), DML (INSERT, COPY) and statements (SET, PREPARE, transactions) are refused";

/// The runtime every SQL query shares: one memory pool of `max_memory` bytes, so that all SQL queries
/// together never hold more (a query that needs more than is left fails with `ResourcesExhausted`), and
/// no spilling to disk.
///
/// # Errors
/// DataFusion's runtime construction error.
pub fn runtime(max_memory: usize) -> Result<Arc<RuntimeEnv>> {
    // No spilling: DataFusion would otherwise write temporary files to the OS temp directory without a
    // bound, trading a memory limit for a disk that fills up.
    let disk = DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled);
    RuntimeEnvBuilder::new().with_memory_limit(max_memory, 1.0).with_disk_manager_builder(disk).build_arc()
}

/// A session over the shared `runtime` with the tenant's tables `logs`, `samples` and `series` (see
/// [`crate::sql_metrics`]) and nothing else. Nothing else is
/// reachable: no information schema, no URL tables (`SELECT * FROM 'file.csv'`), no other catalog; the
/// only table functions are DataFusion's in-memory `generate_series` and `range`.
///
/// # Errors
/// DataFusion's registration error, which cannot happen for a fresh context.
pub fn session(
    store: &LogStore,
    metrics: &MetricStore,
    tenant: &Tenant,
    runtime: Arc<RuntimeEnv>,
    max_memory: usize,
    peers: Option<SqlPeers>,
    trees: crate::peers::TreeSet,
) -> Result<SessionContext> {
    let config = SessionConfig::new().with_information_schema(false);
    let state =
        SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features().build();
    let ctx = SessionContext::new_with_state(state);
    let call = peers.as_ref().map(|p| p.call.clone());
    let logs = LogsTable::new(store.clone(), tenant.clone()).with_trees(trees.clone()).with_peers(peers);
    ctx.register_table("logs", Arc::new(logs))?;
    // Half of the memory budget for the samples one scan loads, 16 bytes each.
    let max_samples = (max_memory / 32).max(1);
    let peers = call.map(|c| (c, tokio::runtime::Handle::current()));
    for (name, kind) in [("samples", Kind::Samples), ("series", Kind::Series)] {
        let table = MetricTable::new(metrics.clone(), tenant.clone(), kind, max_samples)
            .with_trees(trees.clone(), peers.clone());
        ctx.register_table(name, Arc::new(table))?;
    }
    Ok(ctx)
}

/// Deepest expression a SQL query may hold (operators, function calls, CASE arms, nested in one another).
/// Deeper trees would overflow a worker's stack when they are evaluated or dropped.
pub const MAX_EXPR_DEPTH: usize = 256;

/// Stack of the thread that parses and plans a query: a hostile query cannot overflow it before its depth
/// is known (a chain of 10,000 `+` parses into a tree 10,000 deep).
const PLANNER_STACK: usize = 256 << 20;

/// Plans `sql` in `ctx`, refusing anything [`read_only`] does not allow and any expression deeper than
/// [`MAX_EXPR_DEPTH`], before any of it runs. Parsing and planning run on a thread of their own with a
/// large stack; what comes back is bounded, so running it on the runtime's workers is safe.
///
/// # Errors
/// A parse or planning error, `Plan(READ_ONLY ...)` for a refused statement, or a plan error naming the
/// depth limit.
pub async fn plan_read_only(ctx: &SessionContext, sql: &str) -> Result<datafusion::dataframe::DataFrame> {
    let state = ctx.state();
    let sql = sql.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lumen-sql-planner".to_string())
        .stack_size(PLANNER_STACK)
        .spawn(move || {
            let dialect = state.config_options().sql_parser.dialect;
            let statement = state.sql_to_statement(&sql, &dialect).map_err(|e| depth_message(e, &state));
            let planned = statement.and_then(|statement| {
                check_statement(&statement)?;
                futures::executor::block_on(state.statement_to_plan(statement))
            });
            let checked = planned.and_then(|plan| {
                if let Err(e) = read_only().verify_plan(&plan) {
                    let e = e.strip_backtrace();
                    return Err(DataFusionError::Plan(format!(
                        "{READ_ONLY}: {}",
                        e.trim_start_matches("Error during planning: ")
                    )));
                }
                let depth = plan_depth(&plan);
                if depth > MAX_EXPR_DEPTH {
                    // Dropped here, on this thread's stack.
                    drop(plan);
                    return Err(DataFusionError::Plan(format!(
                        "an expression of the query is nested {depth} levels deep, over the limit of \
                         {MAX_EXPR_DEPTH}; split it"
                    )));
                }
                Ok(plan)
            });
            let _ = tx.send(checked);
        })
        .map_err(|e| DataFusionError::Execution(format!("cannot start the SQL planner thread: {e}")))?;
    let plan = rx.await.map_err(|_| DataFusionError::Execution("the SQL planner thread failed".to_string()))??;
    ctx.execute_logical_plan(plan).await
}

/// The parser's own depth limit, said plainly.
fn depth_message(e: DataFusionError, state: &datafusion::execution::SessionState) -> DataFusionError {
    if e.to_string().contains("RecursionLimitExceeded") {
        DataFusionError::Plan(format!(
            "the query is nested deeper than the limit of {} levels (parentheses, subqueries); flatten it",
            state.config_options().sql_parser.recursion_limit
        ))
    } else {
        e
    }
}

/// Refuses, before planning, what [`read_only`] would refuse after it (DataFusion's own `COPY` and
/// `CREATE EXTERNAL TABLE`) and any expression deeper than [`MAX_EXPR_DEPTH`]: planning a very deep
/// expression costs time quadratic in its depth.
fn check_statement(statement: &datafusion::sql::parser::Statement) -> Result<()> {
    use datafusion::sql::parser::Statement as DfStatement;
    use datafusion::sql::sqlparser::ast::Visit;
    match statement {
        DfStatement::Statement(s) => {
            let mut depth = AstDepth::default();
            if s.visit(&mut depth).is_break() {
                return Err(DataFusionError::Plan(format!(
                    "an expression of the query is nested more than {MAX_EXPR_DEPTH} levels deep, over the limit \
                     of {MAX_EXPR_DEPTH}; split it"
                )));
            }
            Ok(())
        }
        DfStatement::Explain(e) => check_statement(&e.statement),
        DfStatement::CopyTo(_) => Err(DataFusionError::Plan(format!("{READ_ONLY}: COPY"))),
        DfStatement::CreateExternalTable(_) => {
            Err(DataFusionError::Plan(format!("{READ_ONLY}: CREATE EXTERNAL TABLE")))
        }
        DfStatement::Reset(_) => Err(DataFusionError::Plan(format!("{READ_ONLY}: RESET"))),
    }
}

/// Expression nesting of a parsed statement; breaks as soon as it passes [`MAX_EXPR_DEPTH`].
#[derive(Default)]
struct AstDepth {
    current: usize,
}

impl datafusion::sql::sqlparser::ast::Visitor for AstDepth {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> std::ops::ControlFlow<()> {
        self.current += 1;
        if self.current > MAX_EXPR_DEPTH {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }

    fn post_visit_expr(&mut self, _: &datafusion::sql::sqlparser::ast::Expr) -> std::ops::ControlFlow<()> {
        self.current -= 1;
        std::ops::ControlFlow::Continue(())
    }
}

/// The depth of the deepest expression in a plan and its subqueries, walked without recursion.
fn plan_depth(plan: &datafusion::logical_expr::LogicalPlan) -> usize {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut max = 0;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|root| {
            let mut stack = vec![(root, 1usize)];
            while let Some((e, d)) = stack.pop() {
                max = max.max(d);
                if d > MAX_EXPR_DEPTH {
                    break;
                }
                let _ = e.apply_children(|c| {
                    stack.push((c, d + 1));
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            Ok(TreeNodeRecursion::Continue)
        })
    });
    max
}

#[cfg(test)]
mod tests;
