//! `POST /api/v1/sql`: the body is the SQL text (or the form field `query`; `GET ?query=` works too).
//! The answer is `{"columns":[{"name","type"}],"rows":[{..}],"truncated":false}`; errors are
//! `{"status":"error","errorType":"bad_data"|"execution"|"timeout"|"resources_exhausted","error":"..."}`
//! with 400, 422 or 503. Only read-only queries run ([`crate::sql::read_only`]); all SQL queries share one
//! memory pool of `query.sql_max_memory`.

use std::time::Instant;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use datafusion::arrow::json::WriterBuilder;
use datafusion::arrow::json::writer::JsonArray;
use datafusion::error::DataFusionError;
use futures::StreamExt;
use serde_json::json;

use crate::http::{QueryState, tenant};
use crate::sql::{plan_read_only, session};

pub(crate) async fn handle(
    State(state): State<QueryState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let (outcome, response) = match run(&state, &headers, raw.as_deref(), &body).await {
        Ok(r) => ("ok", r),
        Err((outcome, r)) => (outcome, r),
    };
    state.metrics.observe("sql", outcome, started.elapsed().as_secs_f64());
    response
}

fn error(status: StatusCode, kind: &str, message: impl std::fmt::Display) -> Response {
    let body = json!({"status": "error", "errorType": kind, "error": message.to_string()});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn form_value(form: &[u8], key: &str) -> Option<String> {
    form_urlencoded::parse(form).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

async fn run(
    state: &QueryState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
    body: &[u8],
) -> Result<Response, (&'static str, Response)> {
    let bad = |msg: String| ("bad_request", error(StatusCode::BAD_REQUEST, "bad_data", msg));
    let tenant = tenant(headers).map_err(|r| ("bad_request", r))?;
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    // `curl -d 'SELECT ...'` labels a plain SQL body as a form, so a form without `query` is read as SQL.
    let form_query = if is_form { form_value(body, "query") } else { None };
    let sql = if form_query.is_some() {
        form_query
    } else if !body.is_empty() {
        Some(String::from_utf8(body.to_vec()).map_err(|_| bad("the SQL text is not valid UTF-8".to_string()))?)
    } else {
        raw_query.and_then(|q| form_value(q.as_bytes(), "query"))
    };
    let sql = sql.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        bad("no SQL given: send it as the body, or as the form or query parameter `query`".to_string())
    })?;

    let max_rows = state.config.sql_max_rows;
    // A query node also reads what its ingest node holds beyond the bucket (the `logs` table).
    let peers = state.for_caller(headers).peer_call();
    let work = async {
        let max_memory = usize::try_from(state.config.sql_max_memory.as_u64()).unwrap_or(usize::MAX);
        let trees = state.tree_set();
        let sql_peers = match &peers {
            Some(call) => {
                // The label and field names each tree's node knows beyond its tree.
                let nodes = trees.log_stores(&state.store).into_iter().map(|(node, _)| node);
                let asks = nodes.map(|node| call.log_columns(node, &tenant));
                let answers = futures::future::join_all(asks).await;
                let mut columns: Option<crate::peers::LogColumns> = None;
                for answer in answers {
                    if let Some(c) = answer.map_err(DataFusionError::Plan)? {
                        let all = columns.get_or_insert_with(Default::default);
                        all.labels.extend(c.labels);
                        all.fields.extend(c.fields);
                    }
                }
                columns.map(|mut columns| {
                    for v in [&mut columns.labels, &mut columns.fields] {
                        v.sort();
                        v.dedup();
                    }
                    crate::sql::SqlPeers { call: call.clone(), columns }
                })
            }
            None => None,
        };
        let ctx = session(
            &state.store,
            &state.metric_store,
            &tenant,
            state.sql_runtime.clone(),
            max_memory,
            sql_peers,
            trees.clone(),
        )?;
        let df = plan_read_only(&ctx, &sql).await?;
        let schema = df.schema().as_arrow().clone();
        let mut stream = df.execute_stream().await?;
        let mut batches = Vec::new();
        let mut rows = 0;
        let mut truncated = false;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if rows + batch.num_rows() > max_rows {
                batches.push(batch.slice(0, max_rows - rows));
                truncated = true;
                break;
            }
            rows += batch.num_rows();
            batches.push(batch);
        }
        Ok::<_, DataFusionError>((schema, batches, truncated))
    };
    let (schema, batches, truncated) = match tokio::time::timeout(state.config.timeout, work).await {
        Err(_) => {
            let msg = format!("query timed out after {}", humantime::format_duration(state.config.timeout));
            return Err(("timeout", error(StatusCode::SERVICE_UNAVAILABLE, "timeout", msg)));
        }
        Ok(Err(e)) => return Err(classify(e)),
        Ok(Ok(r)) => r,
    };
    let mut writer = WriterBuilder::new().with_explicit_nulls(true).build::<_, JsonArray>(Vec::new());
    for b in &batches {
        writer.write(b).map_err(|e| ("error", error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e)))?;
    }
    writer.finish().map_err(|e| ("error", error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e)))?;
    let mut rows = writer.into_inner();
    if rows.is_empty() {
        rows = b"[]".to_vec();
    }
    let columns: Vec<serde_json::Value> =
        schema.fields().iter().map(|f| json!({"name": f.name(), "type": f.data_type().to_string()})).collect();
    let mut out = Vec::with_capacity(rows.len() + 256);
    out.extend_from_slice(b"{\"columns\":");
    out.extend_from_slice(serde_json::to_string(&columns).unwrap_or_default().as_bytes());
    out.extend_from_slice(b",\"rows\":");
    out.extend_from_slice(&rows);
    out.extend_from_slice(format!(",\"truncated\":{truncated}").as_bytes());
    // Parts that could not be read were left out of the scan; say so, as LogQL and PromQL answers do.
    let mut warnings: Vec<String> = Vec::new();
    for (_, store) in state.tree_set().log_stores(&state.store) {
        warnings.extend(store.skipped_parts(&tenant, i64::MIN, i64::MAX).iter().map(ToString::to_string));
    }
    warnings.extend(peers.iter().flat_map(|p| p.warnings()));
    if !warnings.is_empty() {
        out.extend_from_slice(b",\"warnings\":");
        out.extend_from_slice(serde_json::to_string(&warnings).unwrap_or_default().as_bytes());
    }
    out.push(b'}');
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// Planning errors are the query's fault (400); errors while running it are 422, as Prometheus names an
/// execution error; anything else is ours (500).
fn classify(e: DataFusionError) -> (&'static str, Response) {
    let root = e.find_root();
    match root {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_) => ("bad_request", error(StatusCode::BAD_REQUEST, "bad_data", root)),
        DataFusionError::ResourcesExhausted(msg) => (
            "error",
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "resources_exhausted",
                format!(
                    "the query needs more memory than SQL may use now (query.sql_max_memory, shared by all SQL \
                     queries): {msg}; narrow it (time range, fewer groups) or retry"
                ),
            ),
        ),
        DataFusionError::Execution(_) | DataFusionError::ArrowError(..) => {
            ("error", error(StatusCode::UNPROCESSABLE_ENTITY, "execution", root))
        }
        _ => ("error", error(StatusCode::INTERNAL_SERVER_ERROR, "internal", root)),
    }
}
