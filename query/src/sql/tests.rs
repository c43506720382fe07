use std::time::Duration;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use prometheus_client::registry::Registry;
use store::model::{Labels, LogBatch, LogEntry};
use store::{StoreConfig, StoreOptions};

use super::*;

fn open_store(dir: &std::path::Path) -> LogStore {
    LogStore::open(
        StoreOptions {
            data_dir: dir.to_path_buf(),
            retention: Duration::from_secs(86_400 * 30),
            disk: None,
            retention_rules: Vec::new(),
            tuning: StoreConfig::default(),
        },
        &mut Registry::default(),
    )
    .unwrap()
}

async fn store_with_rows(dir: &std::path::Path) -> LogStore {
    let store = open_store(dir);
    let now = store::time::now_ns();
    for (app, n) in [("api", 300), ("web", 200)] {
        let mut b = LogBatch::default();
        let s = b.stream_index(Labels::from_pairs(vec![("app".into(), app.into())]));
        for i in 0..n {
            b.entries.push(LogEntry {
                stream: s,
                time_ns: now - i64::from(i) * 1_000_000_000,
                line: format!("{app} request {i} status={}", if i % 10 == 0 { 500 } else { 200 }),
                fields: vec![("level".into(), if i % 10 == 0 { "error" } else { "info" }.into())],
            });
        }
        store.append(&Tenant::default_tenant(), b).await.unwrap();
    }
    store
}

/// A session over `store` and an empty metric store (kept for the test process' life).
fn session(store: &LogStore, tenant: &Tenant, runtime: Arc<RuntimeEnv>) -> Result<SessionContext> {
    let dir = tempfile::tempdir().unwrap().keep();
    let metrics = store::MetricStore::open(
        StoreOptions {
            data_dir: dir,
            retention: Duration::from_secs(86_400 * 30),
            disk: None,
            retention_rules: Vec::new(),
            tuning: StoreConfig::default(),
        },
        &mut Registry::default(),
    )
    .unwrap();
    super::session(store, &metrics, tenant, runtime, 1 << 30, None, Default::default())
}

async fn scalar(ctx: &SessionContext, sql: &str) -> i64 {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn counts_filters_and_groups_over_head_and_parts() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path()).await;
    let ctx = session(&store, &Tenant::default_tenant(), runtime(1 << 30).unwrap()).unwrap();
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs").await, 500);
    store.flush().await.unwrap();
    let ctx = session(&store, &Tenant::default_tenant(), runtime(1 << 30).unwrap()).unwrap();
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs").await, 500);
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs WHERE app = 'web'").await, 200);
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs WHERE message LIKE '%status=500%'").await, 50);
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs WHERE level = 'error' AND app = 'api'").await, 30);
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs WHERE time > now() - interval '100 seconds'").await, 200);
    assert_eq!(scalar(&ctx, "SELECT count(DISTINCT app) FROM logs").await, 2);
    let other = session(&store, &Tenant::new("other").unwrap(), runtime(1 << 30).unwrap()).unwrap();
    assert_eq!(scalar(&other, "SELECT count(*) FROM logs").await, 0);
}

#[tokio::test]
async fn group_by_label_column() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path()).await;
    let ctx = session(&store, &Tenant::default_tenant(), runtime(1 << 30).unwrap()).unwrap();
    let batches = ctx
        .sql("SELECT app, count(*) AS n FROM logs GROUP BY app ORDER BY app")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2, "{batches:?}");
    let batches =
        ctx.sql("SELECT level, count(*) AS n FROM logs GROUP BY level").await.unwrap().collect().await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
}

#[tokio::test]
async fn group_by_label_column_over_parts() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path()).await;
    store.flush().await.unwrap();
    let ctx = session(&store, &Tenant::default_tenant(), runtime(1 << 30).unwrap()).unwrap();
    for sql in [
        "SELECT app, count(*) AS n FROM logs GROUP BY app ORDER BY app",
        "SELECT app, count(*) AS n FROM logs GROUP BY app",
        "SELECT app FROM logs",
    ] {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert!(rows >= 2, "{sql}: {batches:?}");
    }
}

/// Nothing but read-only queries runs: no statement can write or read a file, create a table or change
/// the session, and the refusal says what is allowed. Nothing is written to disk.
#[tokio::test]
async fn only_read_only_queries_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path()).await;
    let ctx = session(&store, &Tenant::default_tenant(), runtime(1 << 30).unwrap()).unwrap();
    let out = dir.path().join("dump.csv");
    let secret = dir.path().join("secret.csv");
    std::fs::write(&secret, "a,b\n1,2\n").unwrap();
    let refused = [
        format!("COPY (SELECT * FROM logs) TO '{}'", out.display()),
        format!("COPY logs TO '{}' STORED AS CSV", out.display()),
        format!("CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{}'", secret.display()),
        "CREATE TABLE t AS SELECT * FROM logs".to_string(),
        "CREATE VIEW v AS SELECT * FROM logs".to_string(),
        "DROP TABLE logs".to_string(),
        "INSERT INTO logs (message) VALUES ('x')".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "PREPARE p AS SELECT 1".to_string(),
    ];
    for sql in &refused {
        let err = match plan_read_only(&ctx, sql).await {
            Ok(df) => df.collect().await.map(|_| "ran".to_string()).unwrap_or_else(|e| e.to_string()),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("only read-only queries are allowed"), "{sql}: {err}");
    }
    assert!(!out.exists(), "COPY wrote a file");
    // Statements DataFusion does not implement at all are refused too.
    assert!(plan_read_only(&ctx, "BEGIN TRANSACTION").await.is_err());
    // A file path as a table (DataFusion's URL tables) is not a table here.
    let err = plan_read_only(&ctx, &format!("SELECT * FROM '{}'", secret.display())).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    // No information schema, no other tenant's tables.
    assert!(plan_read_only(&ctx, "SELECT * FROM information_schema.tables").await.is_err());
    // What is allowed still runs.
    for sql in [
        "SELECT count(*) FROM logs",
        "WITH x AS (SELECT app FROM logs) SELECT count(*) FROM x",
        "SELECT count(*) FROM (VALUES (1), (2)) AS t(v)",
        "EXPLAIN SELECT count(*) FROM logs",
    ] {
        plan_read_only(&ctx, sql).await.unwrap().collect().await.unwrap();
    }
}

/// Every SQL query's hash tables count against the shared memory pool: a GROUP BY over many distinct
/// values fails with ResourcesExhausted instead of growing without bound.
#[tokio::test]
async fn group_by_over_the_memory_pool_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path()).await;
    let ctx = session(&store, &Tenant::default_tenant(), runtime(256 * 1024).unwrap()).unwrap();
    let sql = "SELECT v % 1000000 AS k, count(*) FROM generate_series(1, 3000000) AS t(v) GROUP BY k";
    let err = plan_read_only(&ctx, sql).await.unwrap().collect().await.unwrap_err();
    assert!(matches!(err.find_root(), DataFusionError::ResourcesExhausted(_)), "{err}");
    let sql = "SELECT count(DISTINCT v) FROM generate_series(1, 3000000) AS t(v)";
    let err = plan_read_only(&ctx, sql).await.unwrap().collect().await.unwrap_err();
    assert!(matches!(err.find_root(), DataFusionError::ResourcesExhausted(_)), "{err}");
    // The pool is free again afterwards: a small query runs.
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs").await, 500);
}

/// Deeply nested or very long expressions are refused by the parser's depth limit or planned on a stack
/// that grows, never overflowing the thread's stack.
#[test]
fn deep_expressions_never_overflow_the_stack() {
    // A small stack, as a tokio worker has (2 MiB).
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let store = store_with_rows(dir.path()).await;
                let ctx = session(&store, &Tenant::default_tenant(), runtime(1 << 30).unwrap()).unwrap();
                let nested = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
                let err = plan_read_only(&ctx, &nested).await.unwrap_err();
                assert!(err.to_string().contains("nested deeper than the limit of 50 levels"), "{err}");
                // A chain within the limit runs; one far over it is refused, whatever its length.
                let chain = |n: usize| format!("SELECT length(message){} FROM logs LIMIT 1", " + 1".repeat(n));
                plan_read_only(&ctx, &chain(200)).await.unwrap().collect().await.unwrap();
                for n in [300, 5000, 100_000] {
                    let err = plan_read_only(&ctx, &chain(n)).await.unwrap_err();
                    assert!(err.to_string().contains("over the limit of 256; split it"), "{n}: {err}");
                    assert!(!err.to_string().contains("stack"), "{err}");
                }
            });
        })
        .unwrap();
    handle.join().expect("no stack overflow");
}

/// Issue 17: a filter on a field (`rare = 'x'`, `rare LIKE`, `rare IS NOT NULL`) does not open the parts
/// that have no such column: a tenant with thousands of sparse field names spread over many parts had
/// every part's footer read and kept for a query of one field. Shown with a part whose file is gone: a
/// query of the field does not touch it; one that reads every part does, and names it.
#[tokio::test]
async fn a_field_filter_leaves_parts_without_the_field_unopened() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let tenant = Tenant::default_tenant();
    // Yesterday at noon: both parts fall on one day whatever the time of the run.
    let day = 86_400 * 1_000_000_000;
    let noon = store::time::now_ns().div_euclid(day) * day - day / 2;
    for (app, n, fields) in [("plain", 50, vec![]), ("rare", 3, vec![("rare".to_string(), "x".to_string())])] {
        let mut b = LogBatch::default();
        let s = b.stream_index(Labels::from_pairs(vec![("app".into(), app.into())]));
        for i in 0..n {
            b.entries.push(LogEntry {
                stream: s,
                time_ns: noon + i,
                line: format!("{app} {i}"),
                fields: fields.clone(),
            });
        }
        store.append(&tenant, b).await.unwrap();
        store.flush().await.unwrap();
    }
    // Remove the first part's file (it has no `rare` column).
    let mut files: Vec<std::path::PathBuf> =
        walk(dir.path()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    std::fs::remove_file(&files[0]).unwrap();

    let ctx = session(&store, &tenant, runtime(1 << 30).unwrap()).unwrap();
    for sql in [
        "SELECT count(*) FROM logs WHERE rare = 'x'",
        "SELECT count(*) FROM logs WHERE rare LIKE 'x%' AND app = 'rare'",
        "SELECT count(*) FROM logs WHERE rare IS NOT NULL",
        "SELECT count(*) FROM logs WHERE rare <> 'y'",
    ] {
        assert_eq!(scalar(&ctx, sql).await, 3, "{sql}");
        assert!(store.skipped_parts(&tenant, i64::MIN, i64::MAX).is_empty(), "{sql} opened a part without the field");
    }
    // Nulls are kept where the filter lets them through, so the part is read there.
    let _ = ctx.sql("SELECT count(*) FROM logs WHERE rare IS NULL").await.unwrap().collect().await;
    assert_eq!(store.skipped_parts(&tenant, i64::MIN, i64::MAX).len(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
