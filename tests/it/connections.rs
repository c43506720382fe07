//! Bounded connections (issue 17): idle and slowloris floods past the connection cap are closed by the header
//! timeout while `/ready` keeps answering; a trickling body gets 408; request bodies past the in-flight budget
//! wait for it; a declared body over the limit is a 413 before it is read.

use std::time::{Duration, Instant};

use bytesize::ByteSize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{TestServer, test_config};

async fn start() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_connections = 20;
    config.server.http_header_timeout = Duration::from_secs(2);
    config.server.http_body_timeout = Duration::from_secs(2);
    config.server.grpc_idle_timeout = Duration::from_secs(3);
    config.server.max_request_size = ByteSize::mib(1);
    config.server.max_line_size = ByteSize::kib(256);
    config.server.max_inflight_request_bytes = ByteSize::mib(1);
    (TestServer::start(config).await, dir)
}

/// Pushes one line stamped now; returns the status.
async fn push_one_line(server: &TestServer) -> reqwest::StatusCode {
    let ns = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let body = serde_json::json!({"streams": [{"stream": {"job": "x"}, "values": [[ns.to_string(), "a"]]}]});
    let r = crate::harness::client()
        .post(server.url("/loki/api/v1/push"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    r.status()
}

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_closed_and_ready_keeps_answering() {
    let (server, _dir) = start().await;
    let addr = server.running.as_ref().unwrap().http_addr;

    // Idle sockets, twice the cap, and slowloris clients that never finish their headers.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\n").await;
        slow.push(s);
    }
    let dripping = tokio::spawn(async move {
        for _ in 0..20 {
            for s in &mut slow {
                let _ = s.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        slow
    });

    // /ready answers while the flood holds every slot: the timeouts free them.
    let started = Instant::now();
    let r = crate::harness::client().get(server.url("/ready")).timeout(Duration::from_secs(15)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(10), "/ready took {:?}", started.elapsed());

    // Every idle socket is closed by the server within a few header timeouts.
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(until_closed(s, Duration::from_secs(15)).await.is_some(), "idle connection {i} still open");
    }
    let mut slow = dripping.await.unwrap();
    for s in &mut slow {
        assert!(until_closed(s, Duration::from_secs(5)).await.is_some(), "a slowloris connection is still open");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_and_bodies_beyond_the_budget_wait_for_it() {
    let (server, _dir) = start().await;
    let addr = server.running.as_ref().unwrap().http_addr;

    // A body declared over max_request_size: 413 before a byte of it is read.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut s, Duration::from_secs(10)).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("server.max_request_size"), "{answer}");

    // A body that trickles: 408 naming the limit, within about the body timeout.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    trickle
        .write_all(b"POST /loki/api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{")
        .await
        .unwrap();
    // While it holds the whole in-flight budget (it declared 1 MiB), another upload waits for the budget
    // instead of adding its body to the server's memory, and goes through once the trickle timed out. (A
    // wait past the waiter's own body timeout is a 503 with Retry-After: src/inflight.rs tests that.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert_eq!(push_one_line(&server).await, 204);
    assert!(started.elapsed() >= Duration::from_millis(1200), "it waited for the budget: {:?}", started.elapsed());

    let answer = until_closed(&mut trickle, Duration::from_secs(10)).await.expect("the trickling upload is answered");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.http_body_timeout"), "{answer}");

    // The budget is back: an ordinary push goes through.
    assert_eq!(push_one_line(&server).await, 204);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_grpc_connection_is_closed_after_the_idle_timeout() {
    let (server, _dir) = start().await;
    let addr = server.running.as_ref().unwrap().otlp_grpc_addr;
    // An HTTP/2 client that sends the connection preface and its (empty) SETTINGS, then nothing: past the
    // header timeout, so only the idle timeout can close it.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let opened = Instant::now();
    let mut first = [0u8; 9];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(first[3], 4, "the server answers with its SETTINGS frame");
    assert!(until_closed(&mut s, Duration::from_secs(15)).await.is_some(), "an idle gRPC connection stayed open");
    let after = opened.elapsed();
    assert!(after >= Duration::from_millis(2_900), "closed after {after:?}, before the 3 s idle timeout");
    // A config whose idle timeout could cut a call short is refused.
    let mut config = test_config(_dir.path());
    config.server.grpc_idle_timeout = config.server.http_body_timeout;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("server.grpc_idle_timeout"), "{err}");
}
