//! An agent's resent batch across ingest nodes (issue 22).
//!
//! One node stores a producer's batch at most once (`LogStore::append_once`). With several ingest nodes
//! behind a load balancer, a retry can reach another node than the first attempt: the first may have
//! stored the batch and lost the answer (a crash, a cut connection). The agent marks such a batch
//! (`X-Lumen-Resend: 1`: a retry, or a batch an earlier run left in its buffer), and an ingest node that
//! has not stored it itself asks every node of `query.ingest_urls` (`GET /internal/v1/producer`, with the
//! caller's own `Authorization` and tenant) for the producer's highest stored sequence before it stores
//! the batch. The answering node waits for an append of that producer under way, so a batch being stored
//! there is counted. Any node at or above the batch's sequence: the batch is a duplicate, answered as
//! stored. A node that does not answer: 503 with Retry-After, since storing it could store it twice; the
//! agent keeps the batch and retries. Batches not marked (the usual case) are never checked.
//!
//! What it does not cover: a first attempt still on its way to the first node (not yet at its handler)
//! when the retry's check asks it. The agent retries only after its request timed out or failed, so that
//! would need the request to be delayed past that.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use store::model::Tenant;

use crate::http::AppState;

/// Where an ingest node answers for a producer's highest stored sequence.
pub const PRODUCER_PATH: &str = "/internal/v1/producer";

/// Answers above this size are not a node's answer.
const MAX_ANSWER: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
pub struct ProducerAnswer {
    /// `server.node_name` of the answering node (empty for role "all").
    pub node: String,
    /// The producer's highest stored sequence there, 0 for none.
    pub stored: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The ingest nodes a resent batch is checked against.
pub struct ResendCheck {
    /// The nodes, asked as a query node asks them (their answers bounded as they arrive, the timeout).
    peers: query::peers::Peers,
    /// This node's name: its own answer is not needed (its store was asked first).
    node: String,
    checks: Family<OutcomeLabel, Counter>,
}

/// What the other ingest nodes said about a resent batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Node `.0` stored the producer up to sequence `.1`, at or past this batch.
    StoredOn(String, u64),
    NotStored,
    /// Why it cannot be told.
    Unknown(String),
}

impl ResendCheck {
    pub fn new(
        urls: Vec<String>,
        client: reqwest::Client,
        timeout: Duration,
        node: String,
        registry: &mut prometheus_client::registry::Registry,
    ) -> ResendCheck {
        let checks = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "lumen_ingest_resend_checks",
            "agent batches marked as resent that this node asked the other ingest nodes about, by outcome \
             (stored_elsewhere: not stored again; not_stored: stored here; unknown: refused with 503)",
            checks.clone(),
        );
        // The query nodes' request counters (lumen_query_ingest_*) are not these: left unregistered.
        let peers = query::peers::Peers::new(urls, client, timeout, query::peers::PeerMetrics::default());
        ResendCheck { peers, node, checks }
    }

    /// Asks every node at once for `producer`'s highest stored sequence.
    pub async fn ask(&self, tenant: &Tenant, producer: &str, seq: u64, auth: Option<&HeaderValue>) -> Verdict {
        let mut headers = HeaderMap::new();
        if let Ok(t) = HeaderValue::from_str(tenant.as_str()) {
            headers.insert(query::http::TENANT_HEADER, t);
        }
        if let Some(a) = auth {
            headers.insert(axum::http::header::AUTHORIZATION, a.clone());
        }
        let q = form_urlencoded::Serializer::new(String::new()).append_pair("producer", producer).finish();
        let path = format!("{PRODUCER_PATH}?{q}");
        let answers = self.peers.broadcast(&axum::http::Method::GET, &path, &headers, Bytes::new(), MAX_ANSWER).await;
        let answers = answers.into_iter().map(|(url, answer)| {
            let (status, body) = answer?;
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_string();
                return Err(format!("{url}: {status}: {text}"));
            }
            serde_json::from_slice::<ProducerAnswer>(&body)
                .map_err(|e| format!("{url}: not an ingest node's answer: {e}"))
        });
        let mut unknown = Vec::new();
        let mut verdict = Verdict::NotStored;
        for a in answers {
            match a {
                Ok(a) if a.node == self.node => {}
                Ok(a) if a.stored >= seq => verdict = Verdict::StoredOn(a.node, a.stored),
                Ok(_) => {}
                Err(e) => unknown.push(e),
            }
        }
        if matches!(verdict, Verdict::NotStored) && !unknown.is_empty() {
            verdict = Verdict::Unknown(unknown.join("; "));
        }
        let outcome = match verdict {
            Verdict::StoredOn(..) => "stored_elsewhere",
            Verdict::NotStored => "not_stored",
            Verdict::Unknown(_) => "unknown",
        };
        self.checks.get_or_create(&OutcomeLabel { outcome }).inc();
        verdict
    }
}

#[derive(Deserialize)]
pub struct ProducerParams {
    producer: String,
}

/// `GET /internal/v1/producer?producer=NAME`: this node's highest stored sequence of the producer for the
/// caller's tenant (`write` scope, as the batches themselves).
pub async fn producer_sequence(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(p): Query<ProducerParams>,
) -> Response {
    let tenant = match crate::http::tenant(&headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if p.producer.is_empty() || p.producer.len() > 256 {
        return (StatusCode::BAD_REQUEST, "producer must be 1 to 256 characters\n").into_response();
    }
    let stored = app.store.stored_sequence(&tenant, &p.producer).await;
    axum::Json(ProducerAnswer { node: app.node.clone(), stored }).into_response()
}
