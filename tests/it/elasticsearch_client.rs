//! The bulk endpoint against a real Elasticsearch client: elasticsearch-py 8's `helpers.bulk`, which
//! checks the `X-Elastic-Product` header, sends PUT with its own vendor content type, and raises on any
//! item error.

use std::process::Command;

use crate::harness::{TestServer, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_py_bulk_helper_stores_every_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let script = r#"
import sys
from elasticsearch import Elasticsearch, helpers
es = Elasticsearch(sys.argv[1], request_timeout=30)
docs = ({"_index": "logs", "_op_type": "create", "_source": {"message": f"doc {i}", "app": "py"}} for i in range(5000))
ok, errors = helpers.bulk(es, docs, chunk_size=1000)
assert ok == 5000 and not errors, (ok, errors)
print(ok)
"#;
    let base = server.url("/insert/elasticsearch/");
    let out =
        tokio::task::spawn_blocking(move || Command::new("python3").args(["-c", script, &base]).output().unwrap())
            .await
            .unwrap();
    assert!(out.status.success(), "elasticsearch-py failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.count("default").await, 5000);
    let rows = server.sql("default", "SELECT count(*) AS n FROM logs WHERE app = 'py' AND message = 'doc 4999'").await;
    assert_eq!(rows[0]["n"], 1);
    server.stop().await;
}
