//! Scraping one Prometheus target the way Prometheus 2.x/3.x does, so that what the agent ships matches what a
//! Prometheus server scraping the same endpoint would store.
//!
//! A [`Scraper`] owns one HTTP client and is shared by every target; each target keeps a [`TargetState`] between
//! scrapes. [`Scraper::scrape`] fetches the target once and returns a [`ScrapeOutcome`] whose `series` are ready to
//! ship by remote write:
//!
//! * the scraped samples, with `job`, `instance` and the target's labels attached (a clash with a scraped label is
//!   settled by [`Target::honor_labels`] as Prometheus settles it, renaming the scraped one to `exported_<name>`);
//! * stale markers (a NaN with bits [`STALE_NAN_BITS`]) for series of the previous scrape that are gone, and for
//!   every series of the previous scrape when this one failed;
//! * the synthetic series `up`, `scrape_duration_seconds`, `scrape_samples_scraped`,
//!   `scrape_samples_post_metric_relabeling` and `scrape_series_added`.
//!
//! What counts as a failed scrape follows Prometheus: a connection error, the timeout, any status but 200 OK, a body
//! over the size limit, and a body with even one bad line (Prometheus drops the whole scrape on a parse error, so
//! does the agent). A failed scrape ships no scraped sample, only stale markers and the synthetic series with
//! `up` = 0.
//!
//! Labels of every series are sorted by name (byte order), which is what remote write requires.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use reqwest::header::{ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT};
use tokio::time::Instant;
use wire::prom::{OwnedSeries, Sample, TextFormat, parse_text};

/// Bits of the NaN that Prometheus writes as a stale marker: the series ended at that timestamp.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Default limit on a scrape body, after gzip decompression (Prometheus has no default limit; 64 MiB is far above
/// any sane exporter's page and keeps a broken one from exhausting the agent's memory).
pub const DEFAULT_BODY_LIMIT: usize = 64 << 20;

/// The `Accept` header Prometheus sends: OpenMetrics 1.0.0, then 0.0.1, then text format 0.0.4, then anything.
pub const ACCEPT_HEADER: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The `User-Agent` of every scrape request.
pub const USER_AGENT_VALUE: &str = concat!("lumen-agent/", env!("CARGO_PKG_VERSION"));

/// One scrape target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `http://host:port/path` to scrape; `https` is refused with a clear error while the agent is built without TLS.
    pub url: String,
    /// Value of the `job` label.
    pub job: String,
    /// Labels added to every sample besides `job` and `instance` (e.g. `namespace`, `pod`, `node`). A `job` or
    /// `instance` entry here replaces the default one; entries with an empty value or a name starting with `__` are
    /// ignored, as Prometheus drops such labels after relabeling; for a name given twice the last entry wins.
    pub labels: Vec<(String, String)>,
    /// On a clash between a scraped label and a target label, keep the scraped value (`true`), or keep the target's
    /// and rename the scraped one to `exported_<name>` (`false`, Prometheus' default).
    pub honor_labels: bool,
    /// Use the timestamps the target exposes (`true`, Prometheus' default); otherwise every sample gets the scrape
    /// time. Series with an exposed timestamp get no stale marker when they disappear, as in Prometheus.
    pub honor_timestamps: bool,
    /// How long the whole request may take, body included; sent as `X-Prometheus-Scrape-Timeout-Seconds`.
    /// Must be above zero: a zero timeout fails every scrape.
    pub timeout: Duration,
    /// How often the target is scraped; the caller schedules; the scraper does not use it.
    pub interval: Duration,
    /// Send the scraper's bearer token (the agent's `bearer_token_file`). The agent sets it only for the
    /// server itself: the token would be given away to any other target.
    pub send_token: bool,
}

/// What a target's previous scrape left, for stale markers and `scrape_series_added`.
///
/// Start with `TargetState::default()` and pass the same value to every scrape of the target.
#[derive(Debug, Default)]
pub struct TargetState {
    /// Every series of the last scrape that returned samples, and whether it gets a stale marker when it is gone
    /// (`false` once a marker was sent, and for series with exposed timestamps). A failed scrape keeps the keys,
    /// as Prometheus keeps its series cache, so the next good scrape does not count them all as added.
    last: HashMap<Labels, bool>,
}

/// The result of one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeOutcome {
    /// Everything to ship: the scraped samples grouped per label set, then stale markers, then the synthetic series.
    pub series: Vec<OwnedSeries>,
    /// Whether the scrape succeeded (the value of `up`).
    pub up: bool,
    /// Why the scrape failed, naming the URL and the cause; `None` when `up`.
    pub error: Option<String>,
    /// Samples in the body (0 when the scrape failed); OpenMetrics `_created` lines are not samples.
    pub samples_scraped: usize,
    /// Time from the start of the request to the end of parsing (the value of `scrape_duration_seconds`).
    pub duration: Duration,
}

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The target URL does not parse.
    #[error("scrape url {url:?} is invalid")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What the URL parser said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The URL is not `http`.
    #[error("scrape url {url} has scheme {scheme:?}: only http is supported, https needs an agent built with TLS")]
    UnsupportedScheme {
        /// The URL as configured.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The URL has no host to take the `instance` label from.
    #[error("scrape url {url} has no host")]
    NoHost {
        /// The URL as configured.
        url: String,
    },
    /// The request failed: connection refused, reset, DNS, a protocol error...
    #[error("cannot fetch {url}")]
    Request {
        /// The URL as configured.
        url: String,
        /// The client's error, whose sources name the cause.
        #[source]
        source: reqwest::Error,
    },
    /// The response, body included, did not arrive within the target's timeout.
    #[error("scrape of {url} timed out after {timeout:?}")]
    Timeout {
        /// The URL as configured.
        url: String,
        /// The target's timeout.
        timeout: Duration,
    },
    /// The server answered with a status other than 200 OK (Prometheus accepts no other).
    #[error("scrape of {url}: server returned HTTP status {status}")]
    Status {
        /// The URL as configured.
        url: String,
        /// The status received.
        status: reqwest::StatusCode,
    },
    /// The body, after decompression, is larger than the scraper's limit.
    #[error("body of {url} exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The URL as configured.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The body says it is gzip-compressed but does not decompress.
    #[error("cannot gunzip the body of {url}")]
    Gzip {
        /// The URL as configured.
        url: String,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// The body is not UTF-8 text.
    #[error("body of {url} is not valid UTF-8")]
    Utf8 {
        /// The URL as configured.
        url: String,
        /// Where the first bad byte is.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// The body has lines that are not valid exposition format.
    #[error(
        "cannot parse the body of {url} ({format:?} format): {bad_lines} bad line(s), the first is line {line}: {message}"
    )]
    Parse {
        /// The URL as configured.
        url: String,
        /// The format the body was parsed as.
        format: TextFormat,
        /// How many lines were bad.
        bad_lines: usize,
        /// 1-based number of the first bad line.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// The task that decompresses and parses the body did not finish (it panicked, or the runtime is stopping).
    #[error("scrape of {url} was lost while parsing")]
    Task {
        /// The URL as configured.
        url: String,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Scrapes targets; one per agent, shared by all targets (it holds one connection pool).
#[derive(Debug, Clone)]
pub struct Scraper {
    client: reqwest::Client,
    body_limit: usize,
    /// Sent to targets with `send_token`.
    token: crate::client::BearerToken,
}

impl Default for Scraper {
    fn default() -> Scraper {
        Scraper::new()
    }
}

impl Scraper {
    /// A scraper with one HTTP client for all targets and a body limit of [`DEFAULT_BODY_LIMIT`].
    ///
    /// The client ignores `HTTP_PROXY` and friends (Prometheus does not use them unless told to, and pod addresses
    /// are never behind the node's proxy), follows up to 10 redirects as Prometheus does, and does not decompress
    /// by itself: the scraper asks for gzip and decompresses under its body limit.
    pub fn new() -> Scraper {
        // Scrapes are plain http (see `fetch`), but reqwest wants its TLS configured all the same. With no
        // file to read, building cannot fail but for a provider without TLS versions, which ring is not.
        let client = crate::client::builder(&crate::client::TlsFiles::default())
            .and_then(|b| b.no_proxy().build().map_err(|e| e.to_string()))
            .expect("a TLS config without files always builds");
        Scraper { client, body_limit: DEFAULT_BODY_LIMIT, token: crate::client::BearerToken::none() }
    }

    /// The same scraper, sending `token` to the targets marked `send_token`.
    pub fn with_token(self, token: crate::client::BearerToken) -> Scraper {
        Scraper { token, ..self }
    }

    /// The same scraper with another limit on the (decompressed) body size, in bytes.
    pub fn with_body_limit(self, body_limit: usize) -> Scraper {
        Scraper { body_limit, ..self }
    }

    /// Scrapes `target` once at time `t_ms` (milliseconds since the epoch: the timestamp of samples without one,
    /// of stale markers and of the synthetic series), updating `state` for the next scrape.
    ///
    /// Never fails: a failure is reported in the outcome (`up == false`, `error`), with stale markers for the
    /// previous scrape's series.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future while the body is being parsed loses `state` (it is reset), so the
    /// next scrape sends no stale markers for series that vanished meanwhile and counts every series as added.
    pub async fn scrape(&self, target: &Target, state: &mut TargetState, t_ms: i64) -> ScrapeOutcome {
        let start = Instant::now();
        let target_labels = Arc::new(target_label_set(target));
        let (res, last) = match self.fetch(target).await {
            Ok(body) => {
                let job = ParseJob {
                    url: target.url.clone(),
                    target_labels: Arc::clone(&target_labels),
                    honor_labels: target.honor_labels,
                    honor_timestamps: target.honor_timestamps,
                    t_ms,
                };
                let last = std::mem::take(&mut state.last);
                let body_limit = self.body_limit;
                match tokio::task::spawn_blocking(move || job.run(body, body_limit, last)).await {
                    Ok((res, last)) => (res, last),
                    Err(source) => (Err(ScrapeError::Task { url: target.url.clone(), source }), HashMap::new()),
                }
            }
            Err(error) => (Err(error), std::mem::take(&mut state.last)),
        };
        state.last = last;
        let duration = start.elapsed();
        match res {
            Ok(parsed) => {
                let mut series = parsed.series;
                let scraped = parsed.samples_scraped as f64;
                let values = [1.0, duration.as_secs_f64(), scraped, scraped, parsed.series_added as f64];
                push_synthetic(&mut series, &target_labels, t_ms, values);
                ScrapeOutcome { series, up: true, error: None, samples_scraped: parsed.samples_scraped, duration }
            }
            Err(error) => {
                let error = crate::redact_urls(&error_chain(&error));
                tracing::debug!(url = %crate::redact_urls(&target.url), %error, "scrape failed");
                let mut series = stale_markers(&mut state.last, t_ms);
                push_synthetic(&mut series, &target_labels, t_ms, [0.0, duration.as_secs_f64(), 0.0, 0.0, 0.0]);
                ScrapeOutcome { series, up: false, error: Some(error), samples_scraped: 0, duration }
            }
        }
    }

    /// Fetches the body of `target` within its timeout.
    async fn fetch(&self, target: &Target) -> Result<RawBody, ScrapeError> {
        let url_text = &target.url;
        let url = reqwest::Url::parse(url_text)
            .map_err(|source| ScrapeError::InvalidUrl { url: url_text.clone(), source: Box::new(source) })?;
        if url.scheme() != "http" {
            return Err(ScrapeError::UnsupportedScheme { url: url_text.clone(), scheme: url.scheme().to_owned() });
        }
        if url.host_str().is_none() {
            return Err(ScrapeError::NoHost { url: url_text.clone() });
        }
        let timeout_seconds = target.timeout.as_secs_f64().to_string();
        let auth = if target.send_token { self.token.header() } else { None };
        let mut request = self.client.get(url);
        if let Some(auth) = auth {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        let request = request
            .header(ACCEPT, ACCEPT_HEADER)
            .header(ACCEPT_ENCODING, "gzip")
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header("X-Prometheus-Scrape-Timeout-Seconds", timeout_seconds);
        let limit = self.body_limit;
        let fetch = async {
            let request_error = |source: reqwest::Error| ScrapeError::Request { url: url_text.clone(), source };
            let mut response = request.send().await.map_err(|e| request_error(e.without_url()))?;
            let status = response.status();
            if status != reqwest::StatusCode::OK {
                return Err(ScrapeError::Status { url: url_text.clone(), status });
            }
            let headers = response.headers();
            let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let gzip = headers.get(CONTENT_ENCODING).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
            let too_large = || ScrapeError::BodyTooLarge { url: url_text.clone(), limit };
            let declared = response.content_length().unwrap_or(0);
            if declared > limit as u64 {
                return Err(too_large());
            }
            // Within the limit, so the conversion holds; the capacity is only a hint.
            let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
            while let Some(chunk) = response.chunk().await.map_err(|e| request_error(e.without_url()))? {
                if bytes.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(RawBody { bytes, gzip, content_type })
        };
        match tokio::time::timeout(target.timeout, fetch).await {
            Ok(res) => res,
            Err(_) => Err(ScrapeError::Timeout { url: url_text.clone(), timeout: target.timeout }),
        }
    }
}

/// Marks a sample whose line had no timestamp; no real exposition carries this one.
const NO_TIMESTAMP: i64 = i64::MIN;

/// The synthetic series every scrape reports, in the order they are shipped.
const SYNTHETIC: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// A label set, sorted by name.
type Labels = Vec<(String, String)>;

/// A body as received.
struct RawBody {
    bytes: Vec<u8>,
    gzip: bool,
    content_type: Option<String>,
}

/// What a good body gave.
struct Parsed {
    /// Scraped series, then stale markers.
    series: Vec<OwnedSeries>,
    samples_scraped: usize,
    series_added: usize,
}

/// A parsed body before staleness: series in order of first appearance, whether each gets a stale marker when it
/// disappears, the index of each label set in `series`, and the number of samples in the body.
struct Body {
    series: Vec<OwnedSeries>,
    tracked: Vec<bool>,
    index: HashMap<Labels, usize>,
    samples: usize,
}

/// Everything needed to turn a body into series, off the async threads.
struct ParseJob {
    url: String,
    target_labels: Arc<Labels>,
    honor_labels: bool,
    honor_timestamps: bool,
    t_ms: i64,
}

impl ParseJob {
    /// Decompresses and parses `body` against the previous scrape's series `last`; returns the parsed body (or why
    /// it is bad) and the series state for the next scrape (`last` itself when the body is bad).
    fn run(
        self,
        body: RawBody,
        body_limit: usize,
        last: HashMap<Labels, bool>,
    ) -> (Result<Parsed, ScrapeError>, HashMap<Labels, bool>) {
        let res = decode(body, body_limit, &self.url).and_then(|(text, format)| self.parse(&text, format));
        match res {
            Ok(Body { mut series, tracked, index, samples }) => {
                let series_added = index.keys().filter(|labels| !last.contains_key(*labels)).count();
                for (labels, track) in &last {
                    if *track && !index.contains_key(labels) {
                        series.push((labels.clone(), vec![Sample { t: self.t_ms, v: f64::from_bits(STALE_NAN_BITS) }]));
                    }
                }
                let next = index.into_iter().map(|(labels, i)| (labels, tracked[i])).collect();
                (Ok(Parsed { series, samples_scraped: samples, series_added }), next)
            }
            Err(error) => (Err(error), last),
        }
    }

    /// Parses a decoded body into series with the target's labels.
    fn parse(&self, text: &str, format: TextFormat) -> Result<Body, ScrapeError> {
        let mut series: Vec<OwnedSeries> = Vec::new();
        let mut tracked: Vec<bool> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut duplicates = 0usize;
        let stats = parse_text(text, format, NO_TIMESTAMP, |labels, t, v| {
            let exposed = t != NO_TIMESTAMP && self.honor_timestamps;
            let t = if exposed { t } else { self.t_ms };
            let labels = merge_labels(labels, &self.target_labels, self.honor_labels);
            match index.get(&labels) {
                Some(&i) => {
                    let samples = &mut series[i].1;
                    // Prometheus refuses a second sample of a series at the same timestamp.
                    if samples.last().is_some_and(|s| s.t == t) {
                        duplicates += 1;
                    } else {
                        samples.push(Sample { t, v });
                    }
                    tracked[i] |= !exposed;
                }
                None => {
                    index.insert(labels.clone(), series.len());
                    series.push((labels, vec![Sample { t, v }]));
                    tracked.push(!exposed);
                }
            }
        });
        if let Some(first) = stats.errors.first() {
            return Err(ScrapeError::Parse {
                url: self.url.clone(),
                format: if stats.openmetrics { TextFormat::OpenMetrics } else { TextFormat::Prometheus },
                bad_lines: stats.error_lines,
                line: first.line,
                message: first.message.clone(),
            });
        }
        if duplicates > 0 {
            tracing::debug!(url = %crate::redact_urls(&self.url), duplicates, "dropped samples with a duplicate timestamp");
        }
        Ok(Body { series, tracked, index, samples: stats.samples })
    }
}

/// Gunzips the body if it is compressed (within `limit`) and checks it is UTF-8; returns it with its format.
fn decode(body: RawBody, limit: usize, url: &str) -> Result<(String, TextFormat), ScrapeError> {
    let bytes = if body.gzip {
        let mut out = Vec::new();
        MultiGzDecoder::new(body.bytes.as_slice())
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|source| ScrapeError::Gzip { url: url.to_owned(), source })?;
        if out.len() > limit {
            return Err(ScrapeError::BodyTooLarge { url: url.to_owned(), limit });
        }
        out
    } else {
        body.bytes
    };
    let text = String::from_utf8(bytes).map_err(|source| ScrapeError::Utf8 { url: url.to_owned(), source })?;
    Ok((text, TextFormat::from_content_type(body.content_type.as_deref())))
}

/// The target's label set, sorted by name: `job`, `instance` (`host:port` of the URL; absent if the URL has no
/// host) and [`Target::labels`].
fn target_label_set(target: &Target) -> Labels {
    let mut labels: Labels = vec![("job".to_owned(), target.job.clone())];
    if let Ok(url) = reqwest::Url::parse(&target.url)
        && let Some(host) = url.host_str()
    {
        let instance = match url.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        labels.push(("instance".to_owned(), instance));
    }
    for (name, value) in &target.labels {
        if value.is_empty() || name.starts_with("__") {
            continue;
        }
        match labels.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1.clone_from(value),
            None => labels.push((name.clone(), value.clone())),
        }
    }
    labels.retain(|(_, v)| !v.is_empty());
    labels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    labels
}

/// Attaches the target's labels to a scraped label set (both sorted by name; the result is too), as Prometheus'
/// `mutateSampleLabels` does: with `honor_labels` a scraped label wins a clash; without, the target's wins and the
/// scraped one is kept as `exported_<name>` (more `exported_` prefixes until the name is free), shortest name first.
fn merge_labels(scraped: &[(&str, &str)], target: &[(String, String)], honor_labels: bool) -> Labels {
    let mut out: Labels = Vec::with_capacity(scraped.len() + target.len());
    let mut conflicts: Vec<(&str, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < scraped.len() || j < target.len() {
        let order = match (scraped.get(i), target.get(j)) {
            (Some(s), Some(t)) => s.0.cmp(t.0.as_str()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push((scraped[i].0.to_owned(), scraped[i].1.to_owned()));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(target[j].clone());
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if honor_labels {
                    out.push((scraped[i].0.to_owned(), scraped[i].1.to_owned()));
                } else {
                    out.push(target[j].clone());
                    conflicts.push(scraped[i]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    if !conflicts.is_empty() {
        conflicts.sort_by_key(|(name, _)| name.len());
        for (name, value) in conflicts {
            let mut new_name = format!("exported_{name}");
            while out.iter().any(|(n, _)| *n == new_name) {
                new_name.insert_str(0, "exported_");
            }
            out.push((new_name, value.to_owned()));
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
    out
}

/// Stale markers at `t_ms` for every series of the previous scrape that still awaits one; marks them sent.
fn stale_markers(last: &mut HashMap<Labels, bool>, t_ms: i64) -> Vec<OwnedSeries> {
    let mut series = Vec::new();
    for (labels, track) in last.iter_mut() {
        if std::mem::take(track) {
            series.push((labels.clone(), vec![Sample { t: t_ms, v: f64::from_bits(STALE_NAN_BITS) }]));
        }
    }
    series
}

/// Appends the synthetic series ([`SYNTHETIC`], in order) with the target's labels.
fn push_synthetic(series: &mut Vec<OwnedSeries>, target_labels: &[(String, String)], t_ms: i64, values: [f64; 5]) {
    for (name, v) in SYNTHETIC.into_iter().zip(values) {
        let labels = merge_labels(&[("__name__", name)], target_labels, false);
        series.push((labels, vec![Sample { t: t_ms, v }]));
    }
}

/// An error and its sources, joined by `: `, skipping a source whose text the chain already holds.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::State;
    use axum::http::{HeaderMap, Uri};
    use axum::response::Response;
    use wire::prom::{OwnedSeries, TextFormat, parse_text};

    use super::{STALE_NAN_BITS, ScrapeOutcome, Scraper, Target, TargetState};

    const PROM: &str = "text/plain; version=0.0.4; charset=utf-8";
    const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// What the fixture server answers on one path.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        content_type: &'static str,
        gzip: bool,
        body: Vec<u8>,
        delay: Duration,
    }

    impl Reply {
        fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
            Reply { status: 200, content_type, gzip: false, body: body.into(), delay: Duration::ZERO }
        }
    }

    /// A fixture HTTP server: canned replies per path, and the headers of every request it got.
    #[derive(Default)]
    struct Fixture {
        replies: Mutex<HashMap<String, Reply>>,
        requests: Mutex<Vec<HeaderMap>>,
    }

    impl Fixture {
        fn set(&self, path: &str, reply: Reply) {
            self.replies.lock().unwrap().insert(path.to_owned(), reply);
        }
    }

    async fn reply(State(fixture): State<Arc<Fixture>>, uri: Uri, headers: HeaderMap) -> Response {
        fixture.requests.lock().unwrap().push(headers);
        let reply = fixture.replies.lock().unwrap().get(uri.path()).cloned();
        let Some(reply) = reply else {
            return Response::builder().status(404).body(Body::from("not found")).unwrap();
        };
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut builder = Response::builder().status(reply.status).header("content-type", reply.content_type);
        let body = if reply.gzip {
            builder = builder.header("content-encoding", "gzip");
            gzip(&reply.body)
        } else {
            reply.body
        };
        builder.body(Body::from(body)).unwrap()
    }

    async fn serve() -> (Arc<Fixture>, SocketAddr) {
        let fixture = Arc::new(Fixture::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(reply).with_state(Arc::clone(&fixture));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (fixture, addr)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn target(addr: SocketAddr, path: &str) -> Target {
        Target {
            url: format!("http://{addr}{path}"),
            job: "test".to_owned(),
            labels: vec![("node".to_owned(), "n1".to_owned()), ("empty".to_owned(), String::new())],
            honor_labels: false,
            honor_timestamps: true,
            timeout: Duration::from_secs(5),
            interval: Duration::from_secs(15),
            send_token: false,
        }
    }

    fn label<'a>(series: &'a OwnedSeries, name: &str) -> Option<&'a str> {
        series.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn named<'a>(outcome: &'a ScrapeOutcome, name: &str) -> Vec<&'a OwnedSeries> {
        outcome.series.iter().filter(|s| label(s, "__name__") == Some(name)).collect()
    }

    /// The single value of a series that must appear once.
    fn value(outcome: &ScrapeOutcome, name: &str) -> f64 {
        let found = named(outcome, name);
        assert_eq!(found.len(), 1, "{name}: {found:?}");
        assert_eq!(found[0].1.len(), 1);
        found[0].1[0].v
    }

    fn stale(outcome: &ScrapeOutcome) -> Vec<&str> {
        let mut names: Vec<&str> = outcome
            .series
            .iter()
            .filter(|s| s.1.iter().any(|x| x.v.to_bits() == STALE_NAN_BITS))
            .map(|s| label(s, "__name__").unwrap())
            .collect();
        names.sort_unstable();
        names
    }

    fn n_samples(outcome: &ScrapeOutcome) -> usize {
        outcome.series.iter().map(|s| s.1.len()).sum()
    }

    fn exposition_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/exposition")
    }

    /// Checks what every outcome must satisfy: sorted, unique label names with values, the target's labels, and
    /// the five synthetic series.
    fn check_shape(outcome: &ScrapeOutcome, addr: SocketAddr) {
        let instance = addr.to_string();
        for series in &outcome.series {
            assert!(series.0.windows(2).all(|w| w[0].0 < w[1].0), "labels not sorted or repeated: {:?}", series.0);
            assert!(series.0.iter().all(|(_, v)| !v.is_empty()), "empty label value: {:?}", series.0);
            assert_eq!(label(series, "job"), Some("test"), "{:?}", series.0);
            assert_eq!(label(series, "instance"), Some(instance.as_str()), "{:?}", series.0);
            assert_eq!(label(series, "node"), Some("n1"));
            assert_eq!(label(series, "empty"), None);
        }
        assert_eq!(value(outcome, "up"), if outcome.up { 1.0 } else { 0.0 });
        assert_eq!(value(outcome, "scrape_samples_scraped"), outcome.samples_scraped as f64);
        assert_eq!(value(outcome, "scrape_samples_post_metric_relabeling"), outcome.samples_scraped as f64);
        assert_eq!(value(outcome, "scrape_duration_seconds"), outcome.duration.as_secs_f64());
        value(outcome, "scrape_series_added");
    }

    #[tokio::test]
    async fn scrapes_every_exposition_file() {
        let (fixture, addr) = serve().await;
        let mut files: Vec<_> = std::fs::read_dir(exposition_dir()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let scraper = Scraper::new();
        let mut n_files = 0;
        for path in files {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let content_type = if name.ends_with(".prom.txt") {
                PROM
            } else if name.ends_with(".om.txt") {
                OPENMETRICS
            } else {
                continue;
            };
            n_files += 1;
            let body = std::fs::read_to_string(&path).unwrap();
            let mut expected = 0;
            let stats =
                parse_text(&body, TextFormat::from_content_type(Some(content_type)), 0, |_, _, _| expected += 1);
            assert_eq!(stats.error_lines, 0, "{name}: {:?}", stats.errors);
            fixture.set(&format!("/{name}"), Reply::ok(content_type, body));

            let target = target(addr, &format!("/{name}"));
            let mut state = TargetState::default();
            let outcome = scraper.scrape(&target, &mut state, 1_700_000_000_000).await;
            assert!(outcome.up, "{name}: {:?}", outcome.error);
            assert_eq!(outcome.error, None);
            assert_eq!(outcome.samples_scraped, expected, "{name}");
            assert_eq!(n_samples(&outcome), expected + 5, "{name}");
            check_shape(&outcome, addr);
            let n_scraped_series = outcome.series.len() - 5;
            assert_eq!(value(&outcome, "scrape_series_added"), n_scraped_series as f64, "{name}");
            assert!(stale(&outcome).is_empty());

            // The same body again: nothing added, nothing stale.
            let again = scraper.scrape(&target, &mut state, 1_700_000_015_000).await;
            assert!(again.up);
            assert_eq!(value(&again, "scrape_series_added"), 0.0, "{name}");
            assert_eq!(again.series.len(), outcome.series.len());
            assert!(stale(&again).is_empty());
        }
        assert_eq!(n_files, 5);
    }

    #[tokio::test]
    async fn sends_prometheus_headers_and_gunzips() {
        let (fixture, addr) = serve().await;
        let body = std::fs::read(exposition_dir().join("node_exporter-e2e-output.prom.txt")).unwrap();
        fixture.set("/plain", Reply::ok(PROM, body.clone()));
        fixture.set("/gzip", Reply { gzip: true, ..Reply::ok(PROM, body) });
        let scraper = Scraper::new();
        let plain = scraper.scrape(&target(addr, "/plain"), &mut TargetState::default(), 1_000).await;
        let gzipped = scraper.scrape(&target(addr, "/gzip"), &mut TargetState::default(), 1_000).await;
        assert!(gzipped.up, "{:?}", gzipped.error);
        assert!(gzipped.samples_scraped > 3000);
        assert_eq!(gzipped.samples_scraped, plain.samples_scraped);
        let strip = |o: &ScrapeOutcome| o.series[..o.series.len() - 5].to_vec();
        assert_eq!(strip(&gzipped), strip(&plain));

        let requests = fixture.requests.lock().unwrap();
        assert_eq!(requests.len(), 2);
        let headers = &requests[1];
        assert_eq!(headers["accept"], super::ACCEPT_HEADER);
        assert!(headers["accept"].to_str().unwrap().starts_with("application/openmetrics-text;version=1.0.0,"));
        assert_eq!(headers["accept-encoding"], "gzip");
        assert_eq!(headers["x-prometheus-scrape-timeout-seconds"], "5");
        assert!(headers["user-agent"].to_str().unwrap().starts_with("lumen-agent/"));
    }

    #[tokio::test]
    async fn honor_labels_settles_clashes_like_prometheus() {
        let (fixture, addr) = serve().await;
        let body = "# TYPE m gauge\nm{job=\"scraped\",instance=\"x:1\",exported_job=\"e\",node=\"\"} 7\n";
        fixture.set("/metrics", Reply::ok(PROM, body));
        let scraper = Scraper::new();

        let mut target = target(addr, "/metrics");
        let outcome = scraper.scrape(&target, &mut TargetState::default(), 1_000).await;
        assert!(outcome.up, "{:?}", outcome.error);
        check_shape(&outcome, addr);
        let m = named(&outcome, "m");
        let expected: Vec<(String, String)> = [
            ("__name__", "m"),
            ("exported_exported_job", "scraped"),
            ("exported_instance", "x:1"),
            ("exported_job", "e"),
            ("instance", addr.to_string().as_str()),
            ("job", "test"),
            ("node", "n1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(m[0].0, expected);

        target.honor_labels = true;
        let outcome = scraper.scrape(&target, &mut TargetState::default(), 1_000).await;
        let m = named(&outcome, "m");
        let expected: Vec<(String, String)> =
            [("__name__", "m"), ("exported_job", "e"), ("instance", "x:1"), ("job", "scraped"), ("node", "n1")]
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
        assert_eq!(m[0].0, expected);
        // The synthetic series always carry the target's own labels.
        let up = named(&outcome, "up");
        assert_eq!(label(up[0], "job"), Some("test"));
        assert_eq!(label(up[0], "instance"), Some(addr.to_string().as_str()));
    }

    #[tokio::test]
    async fn target_labels_may_replace_job_and_instance() {
        let (fixture, addr) = serve().await;
        fixture.set("/metrics", Reply::ok(PROM, "m 1\n"));
        let mut target = target(addr, "/metrics");
        target.labels = vec![("instance".into(), "pod-a".into()), ("__meta_x".into(), "y".into())];
        let outcome = Scraper::new().scrape(&target, &mut TargetState::default(), 1_000).await;
        for series in &outcome.series {
            assert_eq!(label(series, "instance"), Some("pod-a"));
            assert_eq!(label(series, "__meta_x"), None);
        }
    }

    #[tokio::test]
    async fn timestamps_are_honored_or_replaced() {
        let (fixture, addr) = serve().await;
        fixture.set("/prom", Reply::ok(PROM, "a 1 1234\nb 2\n"));
        fixture.set("/om", Reply::ok(OPENMETRICS, "a 1 1.5\nb 2\n# EOF\n"));
        let scraper = Scraper::new();
        let mut target = target(addr, "/prom");
        let t = |o: &ScrapeOutcome, name: &str| named(o, name)[0].1[0].t;
        let outcome = scraper.scrape(&target, &mut TargetState::default(), 9_000).await;
        assert_eq!((t(&outcome, "a"), t(&outcome, "b"), t(&outcome, "up")), (1234, 9_000, 9_000));
        target.url = format!("http://{addr}/om");
        let outcome = scraper.scrape(&target, &mut TargetState::default(), 9_000).await;
        assert!(outcome.up, "{:?}", outcome.error);
        assert_eq!((t(&outcome, "a"), t(&outcome, "b")), (1500, 9_000));
        target.honor_timestamps = false;
        let outcome = scraper.scrape(&target, &mut TargetState::default(), 9_000).await;
        assert_eq!((t(&outcome, "a"), t(&outcome, "b")), (9_000, 9_000));
    }

    #[tokio::test]
    async fn http_error_status_fails_the_scrape() {
        let (fixture, addr) = serve().await;
        fixture.set("/metrics", Reply { status: 500, ..Reply::ok("text/plain", "boom") });
        let target = target(addr, "/metrics");
        let outcome = Scraper::new().scrape(&target, &mut TargetState::default(), 1_000).await;
        assert!(!outcome.up);
        let error = outcome.error.clone().unwrap();
        assert!(error.contains(&target.url) && error.contains("500 Internal Server Error"), "{error}");
        assert_eq!(outcome.series.len(), 5);
        check_shape(&outcome, addr);
        assert_eq!(outcome.samples_scraped, 0);
    }

    #[tokio::test]
    async fn connection_refused_fails_the_scrape() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let target = target(addr, "/metrics");
        let outcome = Scraper::new().scrape(&target, &mut TargetState::default(), 1_000).await;
        assert!(!outcome.up);
        let error = outcome.error.clone().unwrap();
        assert!(error.contains(&target.url), "{error}");
        assert!(error.to_lowercase().contains("connection refused"), "{error}");
        check_shape(&outcome, addr);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_target_times_out() {
        let (fixture, addr) = serve().await;
        fixture.set("/metrics", Reply { delay: Duration::from_secs(60), ..Reply::ok(PROM, "m 1\n") });
        let mut target = target(addr, "/metrics");
        target.timeout = Duration::from_millis(1500);
        let outcome = Scraper::new().scrape(&target, &mut TargetState::default(), 1_000).await;
        assert!(!outcome.up);
        let error = outcome.error.clone().unwrap();
        assert!(error.contains(&target.url) && error.contains("timed out after 1.5s"), "{error}");
        assert!(outcome.duration >= target.timeout && outcome.duration < Duration::from_secs(60));
        check_shape(&outcome, addr);
    }

    #[tokio::test]
    async fn refuses_https_and_oversized_bodies() {
        let (fixture, addr) = serve().await;
        let mut https = target(addr, "/metrics");
        https.url = format!("https://{addr}/metrics");
        let outcome = Scraper::new().scrape(&https, &mut TargetState::default(), 1_000).await;
        let error = outcome.error.unwrap();
        assert!(error.contains(&https.url) && error.contains("https needs an agent built with TLS"), "{error}");

        let big = "m 1\n".repeat(100);
        fixture.set("/plain", Reply::ok(PROM, big.clone()));
        fixture.set("/gzip", Reply { gzip: true, ..Reply::ok(PROM, big) });
        let scraper = Scraper::new().with_body_limit(200);
        for path in ["/plain", "/gzip"] {
            let outcome = scraper.scrape(&target(addr, path), &mut TargetState::default(), 1_000).await;
            assert!(!outcome.up);
            let error = outcome.error.unwrap();
            assert!(error.contains("exceeds the limit of 200 bytes"), "{error}");
        }
    }

    #[tokio::test]
    async fn stale_markers_follow_prometheus() {
        let (fixture, addr) = serve().await;
        let target = target(addr, "/metrics");
        let scraper = Scraper::new();
        let mut state = TargetState::default();

        // `c` has an exposed timestamp: Prometheus never marks such a series stale.
        fixture.set("/metrics", Reply::ok(PROM, "a 1\nb 2\nc 3 500\n"));
        let first = scraper.scrape(&target, &mut state, 1_000).await;
        assert_eq!(value(&first, "scrape_series_added"), 3.0);
        assert!(stale(&first).is_empty());

        fixture.set("/metrics", Reply::ok(PROM, "a 1\n"));
        let second = scraper.scrape(&target, &mut state, 2_000).await;
        assert!(second.up);
        assert_eq!(stale(&second), ["b"]);
        let marker = named(&second, "b")[0];
        assert_eq!(marker.1.len(), 1);
        assert_eq!((marker.1[0].t, marker.1[0].v.to_bits()), (2_000, STALE_NAN_BITS));
        assert_eq!(label(marker, "job"), Some("test"));
        assert_eq!(value(&second, "scrape_series_added"), 0.0);
        assert_eq!(n_samples(&second), 1 + 1 + 5);

        fixture.set("/metrics", Reply::ok(PROM, "a 1\nb 2\n"));
        let third = scraper.scrape(&target, &mut state, 3_000).await;
        assert!(stale(&third).is_empty());
        assert_eq!(value(&third, "scrape_series_added"), 1.0);

        // A bad line fails the whole scrape, as in Prometheus: every series of the last scrape goes stale.
        fixture.set("/metrics", Reply::ok(PROM, "a 1\nb{ 2\n"));
        let fourth = scraper.scrape(&target, &mut state, 4_000).await;
        assert!(!fourth.up);
        let error = fourth.error.clone().unwrap();
        assert!(error.contains(&target.url) && error.contains("line 2"), "{error}");
        assert_eq!(stale(&fourth), ["a", "b"]);
        assert_eq!(fourth.series.len(), 2 + 5);

        // A second failure has nothing left to mark.
        fixture.set("/metrics", Reply { status: 503, ..Reply::ok(PROM, "") });
        let fifth = scraper.scrape(&target, &mut state, 5_000).await;
        assert!(!fifth.up);
        assert!(stale(&fifth).is_empty());

        // Back up: the series are known from before the failures, so none counts as added.
        fixture.set("/metrics", Reply::ok(PROM, "a 1\n"));
        let sixth = scraper.scrape(&target, &mut state, 6_000).await;
        assert!(sixth.up);
        assert!(stale(&sixth).is_empty());
        assert_eq!(value(&sixth, "scrape_series_added"), 0.0);
    }

    #[tokio::test]
    async fn repeated_series_are_grouped() {
        let (fixture, addr) = serve().await;
        let body = "m{a=\"1\"} 1 1000\nm{a=\"2\"} 2 1000\nm{a=\"1\"} 3 2000\nm{a=\"1\"} 4 2000\n";
        fixture.set("/metrics", Reply::ok(PROM, body));
        let outcome = Scraper::new().scrape(&target(addr, "/metrics"), &mut TargetState::default(), 9_000).await;
        assert_eq!(outcome.samples_scraped, 4);
        let m = named(&outcome, "m");
        assert_eq!(m.len(), 2);
        let samples: Vec<(i64, f64)> = m[0].1.iter().map(|s| (s.t, s.v)).collect();
        assert_eq!(samples, [(1000, 1.0), (2000, 3.0)]);
    }
}
