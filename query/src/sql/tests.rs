use std::time::Duration;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use prometheus_client::registry::Registry;
use store::model::{Labels, LogBatch, LogEntry};
use store::{StoreConfig, StoreOptions};

use super::*;

async fn store_with_rows(dir: &std::path::Path) -> LogStore {
    let store = LogStore::open(
        StoreOptions {
            data_dir: dir.to_path_buf(),
            retention: Duration::from_secs(86_400 * 30),
            retention_max_disk: None,
            tuning: StoreConfig::default(),
        },
        &mut Registry::default(),
    )
    .unwrap();
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

async fn scalar(ctx: &SessionContext, sql: &str) -> i64 {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn counts_filters_and_groups_over_head_and_parts() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path()).await;
    let ctx = session(&store, &Tenant::default_tenant()).unwrap();
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs").await, 500);
    store.flush().await.unwrap();
    let ctx = session(&store, &Tenant::default_tenant()).unwrap();
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs").await, 500);
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs WHERE app = 'web'").await, 200);
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs WHERE message LIKE '%status=500%'").await, 50);
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs WHERE level = 'error' AND app = 'api'").await, 30);
    assert_eq!(scalar(&ctx, "SELECT count(*) FROM logs WHERE time > now() - interval '100 seconds'").await, 200);
    assert_eq!(scalar(&ctx, "SELECT count(DISTINCT app) FROM logs").await, 2);
    let other = session(&store, &Tenant::new("other").unwrap()).unwrap();
    assert_eq!(scalar(&other, "SELECT count(*) FROM logs").await, 0);
}

#[tokio::test]
async fn group_by_label_column() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_rows(dir.path()).await;
    let ctx = session(&store, &Tenant::default_tenant()).unwrap();
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
    let ctx = session(&store, &Tenant::default_tenant()).unwrap();
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
