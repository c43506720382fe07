//! The pipeline between the MQTT sources and the store. One task takes the jobs of every connection,
//! gathers what is queued into one batch, decodes it, and writes it: the samples to the metric store under
//! a batch tag, and at the same time the log entries with the marks of the deliveries, each mark naming
//! that tag. A mark only counts once its tag is durable in the metric store (`MetricStore::tag_durable`),
//! so a crash between the two commits can not make a redelivery look stored while its samples are lost,
//! and the two fsyncs overlap instead of following one another. Tags are (epoch, n): a new epoch for every
//! run, batches numbered from 1 within it, so that a tag lost in a crash is never reused. Only once both are durable are the jobs
//! answered, in order, and their sources send the PUBACKs. The next batch is decoded while the previous one
//! is being written.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use store::model::{BatchStream, LogBatch, LogEntry, StreamId, Tenant};
use store::{DeliveryMark, LogStore, MetricBatch, MetricStore, SampleTag};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, MqttConfig};
use crate::decode::{Decoder, Kind, Outcome, Sink};
use crate::metrics::{MqttMetrics, label};
use crate::{Job, Message, Pipeline};

/// Marks kept per broker session: the whole packet-identifier space, since the broker's in-flight window
/// is its own setting.
const BROKER_WINDOW: u32 = 65_536;
/// Jobs queued before producers wait.
const QUEUE: usize = 1024;

/// What [`start`] started.
pub struct IngestStart {
    /// The embedded endpoint's bound address, when it listens.
    pub endpoint_addr: Option<SocketAddr>,
    /// The bound address of its `mqtts` listener, when it listens.
    pub endpoint_tls_addr: Option<SocketAddr>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Where and for whom the embedded endpoint listens.
#[derive(Default)]
pub struct EndpointListen {
    /// Plain MQTT (`server.mqtt_listen`).
    pub plain: Option<SocketAddr>,
    /// MQTT over TLS (`server.mqtts_listen`) and its certificate.
    pub tls: Option<(SocketAddr, crate::endpoint::ServerTls)>,
    /// The server's tokens, accepted as passwords (see `EndpointOptions::auth`).
    pub auth: auth::Auth,
}

/// Starts the MQTT ingest: the pipeline, the broker subscription when `config.broker.url` is set, and the
/// embedded endpoint on the addresses of `listen`.
///
/// # Errors
/// Invalid templates or settings, an unreadable password or certificate file, or an address in use; the
/// message names the key.
/// Checks, without binding or connecting, everything [`start`] would refuse: the templates, the tenant,
/// the broker settings, the listener's password file, and an endpoint beyond loopback that anyone could
/// publish to. `listen`: the endpoint addresses with their config key and flag; `auth_enabled`: whether
/// the server's tokens are on; `read_files`: read the password file (false checks a config written for
/// another machine, where a named file counts as a password). `lumen server --check` calls it.
///
/// # Errors
/// A message naming the key and what to do.
pub fn check(
    config: &MqttConfig,
    listen: &[(SocketAddr, &str, &str)],
    auth_enabled: bool,
    read_files: bool,
) -> Result<(), String> {
    let decoder = Decoder::new(config.all_templates())?;
    Tenant::new(&config.tenant).map_err(|e| format!("mqtt.tenant: {e}"))?;
    if !config.broker.url.is_empty() {
        if read_files {
            crate::broker::Settings::from_config(&config.broker, decoder.filters())?;
        } else {
            // Everything but the password file, which may be another machine's.
            let mut broker = config.broker.clone();
            if !broker.password_file.as_os_str().is_empty() {
                broker.password_file = std::path::PathBuf::new();
                broker.password = "(from a file)".to_string();
            }
            crate::broker::Settings::from_config(&broker, decoder.filters())?;
        }
    }
    if !listen.is_empty() {
        let l = &config.listener;
        let has_password = if read_files {
            config::password(&l.password, &l.password_file)?.is_some()
        } else {
            !l.password.is_empty() || !l.password_file.as_os_str().is_empty()
        };
        let anonymous = l.username.is_empty() || !has_password;
        for (addr, key, _flag) in listen {
            if !addr.ip().is_loopback() && anonymous && !auth_enabled {
                return Err(format!(
                    "the embedded MQTT endpoint listens on {addr} ({key}), beyond loopback: set mqtt.listener.username \
                     and mqtt.listener.password (or password_file), or turn on the server's tokens (server.auth_file, \
                     LUMEN_AUTH_TOKEN), so that only your devices can publish"
                ));
            }
        }
    }
    Ok(())
}

pub async fn start(
    config: &MqttConfig,
    listen: EndpointListen,
    logs: LogStore,
    samples: MetricStore,
    registry: &mut Registry,
    admit: Option<crate::Admit>,
    shutdown: CancellationToken,
) -> Result<IngestStart, String> {
    let named: Vec<(SocketAddr, &str, &str)> = listen
        .plain
        .map(|a| (a, "server.mqtt_listen", "--mqtt-listen"))
        .into_iter()
        .chain(listen.tls.as_ref().map(|(a, _)| (*a, "server.mqtts_listen", "--mqtts-listen")))
        .collect();
    check(config, &named, listen.auth.is_enabled(), true)?;
    let decoder = Decoder::new(config.all_templates())?;
    let filters = decoder.filters();
    let tenant = Tenant::new(&config.tenant).map_err(|e| format!("mqtt.tenant: {e}"))?;
    let metrics = MqttMetrics::register(registry);
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut pipeline = Pipeline::from_sender(tx);
    if let Some(admit) = admit {
        pipeline = pipeline.with_admit(admit, tenant.clone(), metrics.rate_limited.clone());
    }
    let worker = Worker {
        rx,
        decoder,
        logs,
        samples,
        tenant: tenant.clone(),
        metrics: metrics.clone(),
        max_batch: config.batch_max_messages.max(1),
        endpoint_window: u32::from(config.listener.receive_maximum.max(1)),
        garbage_log: RateLimit::new(Duration::from_secs(10)),
        next_tag: SampleTag::NONE,
        held: None,
    };
    let mut tasks = vec![tokio::spawn(worker.run())];

    if !config.broker.url.is_empty() {
        let settings = crate::broker::Settings::from_config(&config.broker, filters)?;
        tasks.push(tokio::spawn(crate::broker::run(settings, pipeline.clone(), metrics.clone(), shutdown.clone())));
    }

    let mut endpoint_addr = None;
    let mut endpoint_tls_addr = None;
    let listeners: Vec<(SocketAddr, Option<crate::endpoint::ServerTls>)> =
        listen.plain.map(|a| (a, None)).into_iter().chain(listen.tls.map(|(a, t)| (a, Some(t)))).collect();
    let auth = listen.auth;
    if !listeners.is_empty() {
        let l = &config.listener;
        let password = config::password(&l.password, &l.password_file)?;
        let username = (!l.username.is_empty()).then(|| l.username.clone());
        let options = crate::endpoint::EndpointOptions {
            username,
            password,
            auth,
            tenant,
            max_packet_size: l.max_packet_size.as_u64() as usize,
            receive_maximum: l.receive_maximum.max(1),
            max_connections: l.max_connections.max(1),
            ..crate::endpoint::EndpointOptions::default()
        };
        // One set of metrics for both listeners (plain and mqtts).
        let endpoint_metrics = crate::metrics::EndpointCollector::register(registry);
        for (addr, tls) in listeners {
            let (key, flag) = if tls.is_some() {
                ("server.mqtts_listen", "--mqtts-listen")
            } else {
                ("server.mqtt_listen", "--mqtt-listen")
            };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                format!(
                    "cannot listen for MQTT on {addr} ({key} / {flag}): {e}; if a broker already listens there, pass \
                     {flag} off (and --mqtt-broker to subscribe to it) or another address"
                )
            })?;
            let bound = Some(listener.local_addr().map_err(|e| e.to_string())?);
            if tls.is_some() {
                endpoint_tls_addr = bound;
            } else {
                endpoint_addr = bound;
            }
            let (options, metrics, shutdown, pipeline) =
                (options.clone(), endpoint_metrics.clone(), shutdown.clone(), pipeline.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = crate::endpoint::serve(listener, tls, options, pipeline, metrics, shutdown).await {
                    tracing::error!(error = %e, "the embedded MQTT endpoint stopped");
                }
            }));
        }
    }
    drop(pipeline);
    Ok(IngestStart { endpoint_addr, endpoint_tls_addr, tasks })
}

/// Logs at most one warning per period, counting the ones held back.
struct RateLimit {
    period: Duration,
    last: Option<Instant>,
    held: u64,
}

impl RateLimit {
    fn new(period: Duration) -> RateLimit {
        RateLimit { period, last: None, held: 0 }
    }

    /// Some(number held back since the last one) when a warning may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < self.period) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

struct Worker {
    rx: mpsc::Receiver<Job>,
    decoder: Decoder,
    logs: LogStore,
    samples: MetricStore,
    tenant: Tenant,
    metrics: Arc<MqttMetrics>,
    max_batch: usize,
    endpoint_window: u32,
    garbage_log: RateLimit,
    /// The tag of the next batch; its epoch is this run's, later than any before.
    next_tag: SampleTag,
    /// A job of another tenant than the batch being gathered: it starts the next batch.
    held: Option<Job>,
}

/// A decoded batch, ready to be written.
struct Decoded {
    jobs: Vec<Job>,
    /// Every job of a batch is of this tenant.
    tenant: Tenant,
    samples: MetricBatch,
    logs: LogBatch,
    marks: Vec<DeliveryMark>,
    /// Messages stored per format.
    formats: HashMap<&'static str, u64>,
    garbage: HashMap<&'static str, u64>,
    duplicates: u64,
    payload_bytes: u64,
}

/// (session, pkid, hash) of a delivery.
type MarkKey = (Arc<str>, u16, u64);

/// A batch being written: the store task, the marks it writes, and the batch to answer.
type Writing = (JoinHandle<Result<(), String>>, HashSet<MarkKey>, Decoded);

impl Worker {
    async fn run(mut self) {
        // An epoch later than every one used before: durable tags', marks', and the clock's (milliseconds).
        let epoch = (self.samples.max_tag_epoch().max(self.logs.max_mark_epoch()) + 1)
            .max(store::time::now_ns() as u64 / 1_000_000);
        self.next_tag = SampleTag { epoch, n: 1 };
        // The write of the previous batch, with the marks it is writing.
        let mut writing: Option<Writing> = None;
        loop {
            let Some(jobs) = self.gather(writing.is_some()).await else {
                break;
            };
            let none = HashSet::new();
            let pending = writing.as_ref().map_or(&none, |(_, marks, _)| marks);
            let next = if jobs.is_empty() { None } else { Some(self.decode(jobs, pending)) };
            let mut failed = None;
            if let Some((handle, _, done)) = writing.take() {
                let result = handle.await.unwrap_or_else(|e| Err(format!("the MQTT store task failed: {e}")));
                failed = result.as_ref().err().cloned();
                if failed.is_some() {
                    // The store's logs recover from a failed write and take later ones: a later tag of this
                    // epoch could become durable while this one is not, and a durable tag must mean every
                    // earlier one of its epoch is. Go on in a new epoch.
                    self.next_tag = SampleTag { epoch: self.next_tag.epoch + 1, n: 1 };
                }
                self.answer(done, result);
            }
            if let Some(next) = next {
                if let Some(reason) = failed {
                    // The batch may have counted on marks of the failed one: refuse it too, its
                    // senders will deliver again.
                    self.answer(next, Err(reason));
                    continue;
                }
                writing = Some(self.write(next));
            }
        }
        if let Some((handle, _, done)) = writing.take() {
            let result = handle.await.unwrap_or_else(|e| Err(format!("the MQTT store task failed: {e}")));
            self.answer(done, result);
        }
    }

    /// Waits for jobs and takes what is queued, up to the batch size. With a write in flight it does not
    /// wait: an empty answer lets the caller finish that write first. None when every producer is gone.
    async fn gather(&mut self, busy: bool) -> Option<Vec<Job>> {
        let first = if let Some(held) = self.held.take() {
            held
        } else if busy {
            match self.rx.try_recv() {
                Ok(j) => j,
                Err(mpsc::error::TryRecvError::Empty) => return Some(Vec::new()),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            }
        } else {
            self.rx.recv().await?
        };
        let mut n = first.messages.len();
        let tenant = first.tenant.clone();
        let mut jobs = vec![first];
        while n < self.max_batch {
            match self.rx.try_recv() {
                Ok(j) if j.tenant == tenant => {
                    n += j.messages.len();
                    jobs.push(j);
                }
                Ok(j) => {
                    // One tenant per batch: this one starts the next.
                    self.held = Some(j);
                    break;
                }
                Err(_) => break,
            }
        }
        Some(jobs)
    }

    fn decode(&mut self, jobs: Vec<Job>, pending: &HashSet<MarkKey>) -> Decoded {
        let tenant = jobs.first().and_then(|j| j.tenant.clone()).unwrap_or_else(|| self.tenant.clone());
        let mut out = Decoded {
            jobs: Vec::new(),
            samples: self.samples.batch(&tenant),
            tenant,
            logs: LogBatch::default(),
            marks: Vec::new(),
            formats: HashMap::new(),
            garbage: HashMap::new(),
            duplicates: 0,
            payload_bytes: 0,
        };
        let mut sink = BatchSink {
            samples: &mut out.samples,
            logs: &mut out.logs,
            streams: HashMap::new(),
            n: 0,
            logs_off: false,
        };
        // Deliveries of this batch: a redelivery may come in the same batch as its first delivery.
        let mut here: HashSet<MarkKey> = HashSet::new();
        for job in &jobs {
            for m in &job.messages {
                let mark = m.dedup.as_ref().map(|d| {
                    let window = if d.session.starts_with("endpoint:") { self.endpoint_window } else { BROKER_WINDOW };
                    (d, window, delivery_hash(m))
                });
                // A redelivery whose log entry is stored but whose samples are not (the log record was
                // durable, the metric record it needs was not: a crash or a failed write between the two)
                // is decoded again for its samples alone, under a new mark.
                let mut samples_only = false;
                if let Some((d, _, hash)) = &mark
                    && d.dup
                {
                    let key = (d.session.clone(), d.pkid, *hash);
                    let stored = match self.logs.delivered(&d.session, d.pkid, *hash) {
                        Some(needs) if needs.is_none() || self.samples.tag_durable(needs) => true,
                        Some(_) => {
                            samples_only = true;
                            false
                        }
                        None => false,
                    };
                    if stored || pending.contains(&key) || here.contains(&key) {
                        out.duplicates += 1;
                        continue;
                    }
                }
                if samples_only {
                    out.duplicates += 1;
                    sink.logs_off = true;
                    self.decoder.decode(&m.topic, &m.payload, m.received_ns, &mut sink);
                    sink.logs_off = false;
                } else {
                    let outcome = self.decoder.decode(&m.topic, &m.payload, m.received_ns, &mut sink);
                    let format = match outcome {
                        Outcome::Decoded(kind) => kind_name(kind),
                        Outcome::Garbage { reason, detail } => {
                            *out.garbage.entry(reason).or_default() += 1;
                            if let Some(held) = self.garbage_log.allow() {
                                tracing::warn!(
                                    topic = %m.topic,
                                    reason,
                                    detail = %detail,
                                    similar_warnings_held_back = held,
                                    "MQTT payload could not be decoded; kept as a log entry with an error field"
                                );
                            }
                            "garbage"
                        }
                    };
                    *out.formats.entry(format).or_default() += 1;
                    out.payload_bytes += m.payload.len() as u64;
                }
                if let Some((d, window, hash)) = mark {
                    here.insert((d.session.clone(), d.pkid, hash));
                    // `needs` is set when the batch is written and its tag known.
                    out.marks.push(DeliveryMark {
                        session: d.session.clone(),
                        window,
                        pkid: d.pkid,
                        hash,
                        needs: SampleTag::NONE,
                    });
                }
            }
        }
        out.jobs = jobs;
        out
    }

    fn write(&mut self, mut batch: Decoded) -> Writing {
        let marks: HashSet<MarkKey> = batch.marks.iter().map(|m| (m.session.clone(), m.pkid, m.hash)).collect();
        let samples = std::mem::replace(&mut batch.samples, self.samples.batch(&batch.tenant));
        let logs = std::mem::take(&mut batch.logs);
        let mut delivery = std::mem::take(&mut batch.marks);
        let tag = self.next_tag;
        self.next_tag.n += 1;
        if !samples.is_empty() {
            for m in &mut delivery {
                m.needs = tag;
            }
        }
        let (sample_store, log_store, tenant) = (self.samples.clone(), self.logs.clone(), batch.tenant.clone());
        let metrics = self.metrics.clone();
        let handle = tokio::spawn(async move {
            let (rejected, _) = samples.rejected();
            metrics.samples_rejected.inc_by(rejected);
            let n = samples.len() as u64;
            let (stored_samples, stored_logs) = tokio::join!(
                sample_store.append_tagged(samples, tag),
                log_store.append_marked(&tenant, logs, delivery)
            );
            stored_samples.map_err(|e| format!("cannot store MQTT samples: {e}"))?;
            stored_logs.map_err(|e| format!("cannot store MQTT messages: {e}"))?;
            metrics.samples.inc_by(n);
            Ok(())
        });
        (handle, marks, batch)
    }

    fn answer(&self, batch: Decoded, result: Result<(), String>) {
        match &result {
            Ok(()) => {
                self.metrics.batches.inc();
                for (format, n) in &batch.formats {
                    self.metrics.messages.get_or_create(&label("format", format)).inc_by(*n);
                }
                for (reason, n) in &batch.garbage {
                    self.metrics.garbage.get_or_create(&label("reason", reason)).inc_by(*n);
                }
                self.metrics.duplicates.inc_by(batch.duplicates);
                self.metrics.payload_bytes.inc_by(batch.payload_bytes);
            }
            Err(reason) => {
                self.metrics.store_errors.inc();
                tracing::error!(error = %reason, messages = batch.jobs.iter().map(|j| j.messages.len()).sum::<usize>(),
                    "MQTT messages could not be stored; they are not acknowledged and will be delivered again");
            }
        }
        let stats = self.decoder.stats();
        sync_counter(&self.metrics.sparkplug_seq_gaps, stats.sparkplug_seq_gaps);
        sync_counter(&self.metrics.sparkplug_births, stats.sparkplug_births);
        sync_counter(&self.metrics.sparkplug_deaths, stats.sparkplug_deaths);
        sync_counter(&self.metrics.sparkplug_unknown_aliases, stats.sparkplug_unknown_aliases);
        for job in batch.jobs {
            let _ = job.done.send(result.clone());
        }
    }
}

/// Raises a counter to a running total kept elsewhere.
fn sync_counter(c: &prometheus_client::metrics::counter::Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Json => "json",
        Kind::Sparkplug => "sparkplug",
        Kind::Influx => "influx",
        Kind::Plain => "plain",
        Kind::Text => "text",
    }
}

/// A hash of topic and payload, telling a redelivery from another message under a reused packet id.
pub(crate) fn delivery_hash(m: &Message) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(m.topic.as_bytes());
    h.update(&[0]);
    h.update(&m.payload);
    h.digest()
}

/// Feeds decoded samples and log entries into the store's batches.
struct BatchSink<'a> {
    samples: &'a mut MetricBatch,
    logs: &'a mut LogBatch,
    streams: HashMap<StreamId, u32>,
    n: usize,
    /// Set while a message whose log entry is already stored is decoded again for its samples.
    logs_off: bool,
}

impl Sink for BatchSink<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], t_ms: i64, value: f64) {
        self.samples.add(labels, [(t_ms, value)]);
    }

    fn log(&mut self, labels: &[(&str, &str)], t_ns: i64, line: &str, fields: &[(&str, &str)]) {
        if self.logs_off {
            return;
        }
        let mut sorted: Vec<(&str, &str)> = labels.iter().copied().filter(|(_, v)| !v.is_empty()).collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        let id = store::model::stream_id_of(sorted.iter().copied());
        let logs = &mut *self.logs;
        let stream = *self.streams.entry(id).or_insert_with(|| {
            let pairs = sorted.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            logs.streams.push(BatchStream { id, labels: store::model::Labels::from_pairs(pairs) });
            (logs.streams.len() - 1) as u32
        });
        logs.entries.push(LogEntry {
            stream,
            time_ns: t_ns,
            line: line.to_string(),
            fields: fields.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        });
        self.n += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use prometheus_client::registry::Registry;
    use store::{LogStore, MetricStore, StoreConfig, StoreOptions};

    use super::*;
    use crate::DedupKey;

    struct Fixture {
        logs: LogStore,
        samples: MetricStore,
        pipeline: Pipeline,
        metrics: Arc<MqttMetrics>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            data_dir: dir.path().to_path_buf(),
            retention: Duration::from_secs(30 * 86_400),
            disk: None,
            retention_rules: Vec::new(),
            tuning: StoreConfig::default(),
        };
        let mut registry = Registry::default();
        let logs = LogStore::open(options.clone(), &mut registry).unwrap();
        let samples = MetricStore::open(options, &mut registry).unwrap();
        let metrics = MqttMetrics::register(&mut registry);
        let (tx, rx) = mpsc::channel(16);
        let worker = Worker {
            rx,
            decoder: Decoder::new(vec![crate::topic::TemplateConfig {
                topic: "dev/{device}".into(),
                format: Default::default(),
                metric: None,
                labels: Default::default(),
            }])
            .unwrap(),
            logs: logs.clone(),
            samples: samples.clone(),
            tenant: Tenant::default_tenant(),
            metrics: metrics.clone(),
            max_batch: 100,
            endpoint_window: 16,
            garbage_log: RateLimit::new(Duration::from_secs(10)),
            next_tag: SampleTag::NONE,
            held: None,
        };
        tokio::spawn(worker.run());
        Fixture { logs, samples, pipeline: Pipeline::from_sender(tx), metrics, _dir: dir }
    }

    fn msg(device: &str, payload: &str, pkid: u16, dup: bool) -> Message {
        Message {
            topic: format!("dev/{device}"),
            payload: Bytes::from(payload.to_string()),
            received_ns: store::time::now_ns(),
            dedup: Some(DedupKey { session: Arc::from("endpoint:d"), pkid, dup }),
        }
    }

    async fn submit(f: &Fixture, messages: Vec<Message>) {
        f.pipeline.submit(messages).await.unwrap().await.unwrap().unwrap();
    }

    fn entries(f: &Fixture) -> u64 {
        f.logs.stats().head_rows as u64
    }

    #[tokio::test]
    async fn a_redelivery_of_a_stored_message_is_acknowledged_without_storing_it_again() {
        let f = fixture();
        submit(&f, vec![msg("a", r#"{"t":1}"#, 1, false), msg("a", r#"{"t":2}"#, 2, false)]).await;
        assert_eq!(entries(&f), 2);
        assert!(f.samples.stats().head_samples >= 2);
        // The broker or device delivers packet 2 again, with DUP: it is the same message.
        submit(&f, vec![msg("a", r#"{"t":2}"#, 2, true)]).await;
        assert_eq!(entries(&f), 2);
        assert_eq!(f.metrics.duplicates.get(), 1);
        // DUP but other content under that packet id: another message, stored.
        submit(&f, vec![msg("a", r#"{"t":3}"#, 2, true)]).await;
        assert_eq!(entries(&f), 3);
        // The same content again without DUP: a new message that happens to repeat a reading, stored.
        submit(&f, vec![msg("a", r#"{"t":3}"#, 2, false)]).await;
        assert_eq!(entries(&f), 4);
        // A redelivery in the same batch as its first delivery.
        submit(&f, vec![msg("b", r#"{"t":9}"#, 7, false), msg("b", r#"{"t":9}"#, 7, true)]).await;
        assert_eq!(entries(&f), 5);
        assert_eq!(f.metrics.duplicates.get(), 2);
        let json = f.metrics.messages.get_or_create(&label("format", "json")).get();
        assert_eq!(json, 5, "stored messages are counted by format; redeliveries are not");
    }

    #[tokio::test]
    async fn a_redelivery_whose_samples_are_not_durable_stores_its_samples_and_not_its_log_entry_again() {
        let f = fixture();
        submit(&f, vec![msg("a", r#"{"t":1}"#, 1, false)]).await;
        let epoch = f.samples.max_tag_epoch();
        assert!(f.samples.tag_durable(SampleTag { epoch, n: 1 }), "the batch's samples were written under a tag");
        assert_eq!(f.samples.stats().head_samples, 1);
        // As after a crash between the two commits: the log record with the message's entry and its mark is
        // durable, the metric record with the samples it needs is not.
        let lost = msg("a", r#"{"t":2}"#, 2, false);
        let mut samples = f.samples.batch(&Tenant::default_tenant());
        let mut logs = LogBatch::default();
        let mut sink =
            BatchSink { samples: &mut samples, logs: &mut logs, streams: HashMap::new(), n: 0, logs_off: false };
        let mut decoder = Decoder::new(vec![crate::topic::TemplateConfig {
            topic: "dev/{device}".into(),
            format: Default::default(),
            metric: None,
            labels: Default::default(),
        }])
        .unwrap();
        decoder.decode(&lost.topic, &lost.payload, lost.received_ns, &mut sink);
        assert_eq!((logs.entries.len(), samples.len()), (1, 1));
        let mark = DeliveryMark {
            session: Arc::from("endpoint:d"),
            window: 16,
            pkid: 2,
            hash: delivery_hash(&lost),
            needs: SampleTag { epoch, n: 1_000 },
        };
        f.logs.append_marked(&Tenant::default_tenant(), logs, vec![mark]).await.unwrap();
        assert_eq!(entries(&f), 2);
        // The redelivery brings the samples back without a second log entry.
        submit(&f, vec![msg("a", r#"{"t":2}"#, 2, true)]).await;
        assert_eq!(entries(&f), 2, "the log entry is stored once");
        assert_eq!(f.samples.stats().head_samples, 2, "the lost sample is stored");
        assert_eq!(f.metrics.duplicates.get(), 1);
        // The new mark names durable samples: one more redelivery is a duplicate through and through.
        submit(&f, vec![msg("a", r#"{"t":2}"#, 2, true)]).await;
        assert_eq!(entries(&f), 2);
        assert_eq!(f.samples.stats().head_samples, 2);
        assert_eq!(f.metrics.duplicates.get(), 2);
        // A mark that needs no samples (a batch without any) counts as soon as it is there.
        let plain = msg("a", "not json", 3, false);
        let mark = DeliveryMark {
            session: Arc::from("endpoint:d"),
            window: 16,
            pkid: 3,
            hash: delivery_hash(&plain),
            needs: SampleTag::NONE,
        };
        f.logs.append_marked(&Tenant::default_tenant(), LogBatch::default(), vec![mark]).await.unwrap();
        submit(&f, vec![msg("a", "not json", 3, true)]).await;
        assert_eq!(f.metrics.duplicates.get(), 3);
        assert_eq!(entries(&f), 2);
    }

    #[tokio::test]
    async fn jobs_of_different_tenants_queued_together_are_stored_each_under_its_own() {
        let f = fixture();
        let mut waiting = Vec::new();
        for i in 0..30u16 {
            let tenant = [None, Some(Tenant::new("team-b").unwrap())][usize::from(i % 2)].clone();
            let m = msg("t", &format!(r#"{{"n":{i}}}"#), i + 1, false);
            waiting.push(f.pipeline.submit_for(tenant, vec![m]).await.unwrap());
        }
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        let count = |t: &str| f.logs.count_by_stream(&Tenant::new(t).unwrap(), &[], i64::MIN, i64::MAX).unwrap();
        let (a, b): (u64, u64) = (count("default").values().sum(), count("team-b").values().sum());
        assert_eq!((a, b), (15, 15), "each tenant holds its own half");
    }

    #[tokio::test]
    async fn many_jobs_are_answered_in_order_and_every_message_is_stored() {
        let f = fixture();
        let mut waiting = Vec::new();
        for i in 0..50u16 {
            let batch = (0..20u16).map(|j| msg("c", &format!(r#"{{"n":{}}}"#, i * 20 + j), i * 20 + j + 1, false));
            waiting.push(f.pipeline.submit(batch.collect()).await.unwrap());
        }
        for rx in waiting {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(entries(&f), 1000);
        assert_eq!(f.metrics.samples.get(), 1000);
        assert!(f.metrics.batches.get() < 50, "queued jobs are written together");
    }
}
