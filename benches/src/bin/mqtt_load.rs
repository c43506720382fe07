//! MQTT load generator for `benches/e2e_mqtt.sh`.
//!
//! Publish mode (default): `--messages` JSON telemetry samples of about 120 bytes from `--devices` devices, spread
//! over `--connections` MQTT connections (device `d` publishes on connection `d % connections`), on topics
//! `<prefix>/site<k>/dev<d>/telemetry`. Messages go round by round: round `r` carries one sample of every device,
//! with `ts` = start + r × `--ts-step-ms`, so every message is a distinct sample (the last round is about now).
//! With QoS 1 it waits until every message has its PUBACK; with QoS 0 until every message was written to the
//! socket. Then it prints one line of JSON to stdout:
//! `{"mode":"publish","messages":N,"published_s":..,"acked_s":..,"rate_acked":..,"t_start_unix":..,..}`.
//!
//! Subscribe mode (`--subscribe`): one connection with a persistent session (clean session off) subscribes QoS 1
//! to `<prefix>/#`, reports `subscribed` on stderr (and creates `--ready-file` if given), counts PUBLISH packets
//! until `--messages` have arrived, then prints
//! `{"mode":"subscribe","messages":N,"received_s":..,"t_first_unix":..,"t_last_unix":..,..}`; the end-to-end
//! time of a relay is `t_last_unix` of the subscriber minus `t_start_unix` of the publisher.
//!
//! Exit status: 0 done, 1 connection failure or refused connection/subscription, 3 `--timeout` reached.
//! Usage: `mqtt_load --port 1883 [--messages 1000000] [--devices 1000] [--qos 1] [--connections 4]`.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeReasonCode,
};

/// Progress over all connections, for the message on a timeout.
static PUBLISHED: AtomicU64 = AtomicU64::new(0);
static ACKED: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);

#[derive(Parser, Debug, Clone)]
#[command(about = "MQTT load publisher / counting subscriber for Lumen's end-to-end benchmark")]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Messages to publish (or to wait for with --subscribe).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Distinct devices (topics).
    #[arg(long, default_value_t = 1_000)]
    devices: u64,
    /// Sites the devices are spread over (topic level `site<k>`).
    #[arg(long, default_value_t = 10)]
    sites: u64,
    /// QoS of the published messages.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// MQTT connections the devices are spread over.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Unacknowledged QoS 1 messages allowed per connection.
    #[arg(long, default_value_t = 200)]
    inflight: u16,
    /// First topic level.
    #[arg(long, default_value = "bench")]
    topic_prefix: String,
    /// Milliseconds between a device's consecutive samples (`ts`).
    #[arg(long, default_value_t = 10)]
    ts_step_ms: u64,
    /// Subscribe QoS 1 to `<prefix>/#` and count messages instead of publishing.
    #[arg(long)]
    subscribe: bool,
    /// Client id of the subscriber (its persistent session); publishers use `<prefix>-pub-<pid>-<n>`.
    #[arg(long)]
    client_id: Option<String>,
    /// File created once the subscription is acknowledged (subscribe mode).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Give up (exit 3) after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Set TCP_NODELAY (by default Nagle's algorithm may coalesce small publishes).
    #[arg(long)]
    nodelay: bool,
    /// Tokio worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.devices == 0 || args.connections == 0 || args.sites == 0 || args.inflight == 0 {
        eprintln!("mqtt_load: --devices, --connections, --sites and --inflight must be at least 1");
        return ExitCode::from(2);
    }
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqtt_load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit = Duration::from_secs(args.timeout);
    let result = rt.block_on(async {
        let work = async { if args.subscribe { subscribe(&args).await } else { publish(&args).await } };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r.map_err(|e| (ExitCode::FAILURE, e)),
            Err(_) => {
                let progress = if args.subscribe {
                    format!("{} of {} messages received", RECEIVED.load(Ordering::Relaxed), args.messages)
                } else {
                    format!(
                        "{} of {} messages published, {} acknowledged",
                        PUBLISHED.load(Ordering::Relaxed),
                        args.messages,
                        ACKED.load(Ordering::Relaxed)
                    )
                };
                Err((ExitCode::from(3), format!("timed out after {} s: {progress}", args.timeout)))
            }
        }
    });
    match result {
        Ok(line) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err((code, msg)) => {
            eprintln!("mqtt_load: {msg}");
            code
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn options(args: &Args, id: String, clean_session: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, args.host.clone(), args.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean_session);
    o.set_inflight(args.inflight);
    o
}

/// Polls until the CONNACK; any other outcome is an error.
async fn connect(el: &mut EventLoop, args: &Args) -> Result<(), String> {
    let addr = format!("{}:{}", args.host, args.port);
    let first = tokio::time::timeout(Duration::from_secs(10), el.poll())
        .await
        .map_err(|_| format!("no CONNACK from {addr} within 10 s"))?;
    match first {
        Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => Ok(()),
        Ok(Event::Incoming(Packet::ConnAck(ack))) => Err(format!("{addr} refused the connection: {:?}", ack.code)),
        Ok(other) => Err(format!("expected a CONNACK from {addr}, got {other:?}")),
        Err(e) => Err(format!("cannot connect to {addr}: {e}")),
    }
}

/// Sends DISCONNECT and polls until it is written (at most 2 s), so the broker sees a clean close.
async fn disconnect(client: &AsyncClient, el: &mut EventLoop) {
    if client.disconnect().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// One sample of device `d` in round `r` (message number `seq`): about 120 bytes of JSON.
fn payload(buf: &mut String, ts_ms: u64, seq: u64, d: u64, r: u64) {
    use std::fmt::Write as _;
    // A cheap deterministic mix, so that values vary over devices and time.
    let h = (d.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ r.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)).rotate_left(29);
    let temp = 1500 + h % 1500; // 15.00 .. 29.99
    let hum = 300 + (h >> 12) % 500; // 30.0 .. 79.9
    let bat = 330 + (h >> 24) % 90; // 3.30 .. 4.19
    let rssi = 40 + (h >> 36) % 50; // -40 .. -89
    let status = if bat < 340 { "low" } else { "ok" };
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"ts":{ts_ms},"seq":{seq},"temperature":{}.{:02},"humidity":{}.{},"battery":{}.{:02},"rssi":-{rssi},"status":"{status}","fw":"2.1.7"}}"#,
        temp / 100,
        temp % 100,
        hum / 10,
        hum % 10,
        bat / 100,
        bat % 100,
    );
}

#[derive(Default, Debug)]
struct ConnStats {
    published: u64,
    acked: u64,
    payload_bytes: u64,
    published_at: Option<Duration>,
    done_at: Option<Duration>,
}

async fn publish(args: &Args) -> Result<String, String> {
    let n = args.messages;
    let d_total = args.devices;
    let conns = args.connections.min(d_total);
    let qos = if args.qos == 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce };
    let rounds = n.div_ceil(d_total);
    let per_site = d_total.div_ceil(args.sites);
    let now_ms = (unix_now() * 1000.0) as u64;
    let start_ms = now_ms.saturating_sub(rounds.saturating_sub(1) * args.ts_step_ms);
    let pid = std::process::id();

    // Connect everything first, so that a refused connection fails before anything is sent.
    let mut links = Vec::new();
    for c in 0..conns {
        let devs: Vec<u64> = (c..d_total).step_by(conns as usize).collect();
        let expected: u64 = devs.iter().filter(|&&d| d < n).map(|&d| (n - d - 1) / d_total + 1).sum();
        if expected == 0 {
            continue;
        }
        let id = format!("{}-pub-{pid}-{c}", args.topic_prefix);
        let mut opts = options(args, id, true);
        opts.set_request_channel_capacity(1024);
        let (client, mut el) = AsyncClient::new(opts, 1024);
        if args.nodelay {
            let mut net = el.network_options();
            net.set_tcp_nodelay(true);
            el.set_network_options(net);
        }
        connect(&mut el, args).await?;
        links.push((client, el, devs, expected));
    }

    let t0 = Instant::now();
    let t_start_unix = unix_now();
    let mut producers = Vec::new();
    let mut drivers = Vec::new();
    for (client, mut el, devs, expected) in links {
        let producer_client = client.clone();
        let prefix = args.topic_prefix.clone();
        let step = args.ts_step_ms;
        producers.push(tokio::spawn(async move {
            let topics: Vec<String> =
                devs.iter().map(|d| format!("{prefix}/site{}/dev{d}/telemetry", d / per_site)).collect();
            let mut buf = String::with_capacity(160);
            let mut bytes = 0u64;
            for r in 0..rounds {
                for (i, &d) in devs.iter().enumerate() {
                    let seq = r * d_total + d;
                    if seq >= n {
                        break;
                    }
                    payload(&mut buf, start_ms + r * step, seq, d, r);
                    bytes += buf.len() as u64;
                    if producer_client.publish(topics[i].clone(), qos, false, buf.as_bytes().to_vec()).await.is_err() {
                        // The event loop ended (its error is reported by the driver).
                        return bytes;
                    }
                }
            }
            bytes
        }));
        let qos1 = qos == QoS::AtLeastOnce;
        drivers.push(tokio::spawn(async move {
            let mut st = ConnStats::default();
            loop {
                let ev = el.poll().await.map_err(|e| {
                    format!("connection lost after {} published, {} acknowledged: {e}", st.published, st.acked)
                })?;
                match ev {
                    Event::Outgoing(Outgoing::Publish(_)) => {
                        st.published += 1;
                        PUBLISHED.fetch_add(1, Ordering::Relaxed);
                        if st.published == expected {
                            st.published_at = Some(t0.elapsed());
                        }
                    }
                    Event::Incoming(Packet::PubAck(_)) => {
                        st.acked += 1;
                        ACKED.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                if (qos1 && st.acked >= expected) || (!qos1 && st.published >= expected) {
                    st.done_at = Some(t0.elapsed());
                    break;
                }
            }
            disconnect(&client, &mut el).await;
            Ok::<ConnStats, String>(st)
        }));
    }

    let mut total = ConnStats::default();
    for d in drivers {
        let st = d.await.map_err(|e| format!("connection task failed: {e}"))??;
        total.published += st.published;
        total.acked += st.acked;
        total.published_at = total.published_at.max(st.published_at);
        total.done_at = total.done_at.max(st.done_at);
    }
    for p in producers {
        total.payload_bytes += p.await.map_err(|e| format!("publishing task failed: {e}"))?;
    }
    let t_end_unix = t_start_unix + total.done_at.unwrap_or_default().as_secs_f64();
    let published_s = total.published_at.unwrap_or_default().as_secs_f64();
    let done_s = total.done_at.unwrap_or_default().as_secs_f64();
    let acked = qos == QoS::AtLeastOnce;
    let out = serde_json::json!({
        "mode": "publish",
        "messages": n,
        "qos": args.qos,
        "devices": d_total,
        "connections": conns,
        "inflight": args.inflight,
        "payload_bytes_avg": round3(total.payload_bytes as f64 / n.max(1) as f64),
        "published": total.published,
        "acked": if acked { Some(total.acked) } else { None },
        "published_s": round3(published_s),
        "acked_s": if acked { Some(round3(done_s)) } else { None },
        "rate_published": (n as f64 / published_s.max(1e-9)).round(),
        "rate_acked": if acked { Some((n as f64 / done_s.max(1e-9)).round()) } else { None },
        "t_start_unix": round3(t_start_unix),
        "t_end_unix": round3(t_end_unix),
    });
    Ok(out.to_string())
}

async fn subscribe(args: &Args) -> Result<String, String> {
    let id = args.client_id.clone().unwrap_or_else(|| format!("{}-sub", args.topic_prefix));
    let opts = options(args, id, false);
    let (client, mut el) = AsyncClient::new(opts, 64);
    connect(&mut el, args).await?;
    let filter = format!("{}/#", args.topic_prefix);
    client.subscribe(filter.clone(), QoS::AtLeastOnce).await.map_err(|e| format!("subscribe: {e}"))?;
    loop {
        match el.poll().await.map_err(|e| format!("connection lost before the SUBACK: {e}"))? {
            Event::Incoming(Packet::SubAck(ack)) => {
                if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                    return Err(format!("the broker refused the subscription to {filter}"));
                }
                break;
            }
            Event::Incoming(Packet::Publish(_)) => {
                return Err(format!("messages arrived on {filter} before the SUBACK: a stale session?"));
            }
            _ => {}
        }
    }
    eprintln!("mqtt_load: subscribed to {filter}");
    if let Some(f) = &args.ready_file {
        std::fs::write(f, b"subscribed\n").map_err(|e| format!("{}: {e}", f.display()))?;
    }
    let n = args.messages;
    let (mut received, mut dups, mut bytes) = (0u64, 0u64, 0u64);
    let mut first: Option<(Instant, f64)> = None;
    while received < n {
        let ev = el.poll().await.map_err(|e| format!("connection lost after {received} messages: {e}"))?;
        if let Event::Incoming(Packet::Publish(p)) = ev {
            if first.is_none() {
                first = Some((Instant::now(), unix_now()));
            }
            received += 1;
            RECEIVED.store(received, Ordering::Relaxed);
            dups += u64::from(p.dup);
            bytes += p.payload.len() as u64;
        }
    }
    let (t_first, t_first_unix) = first.unwrap_or((Instant::now(), unix_now()));
    let received_s = t_first.elapsed().as_secs_f64();
    let t_last_unix = unix_now();
    // The PUBACKs of the last batch were flushed before its first packet was yielded; close cleanly.
    disconnect(&client, &mut el).await;
    let out = serde_json::json!({
        "mode": "subscribe",
        "messages": n,
        "received": received,
        "dup_flagged": dups,
        "payload_bytes_avg": round3(bytes as f64 / received.max(1) as f64),
        "received_s": round3(received_s),
        "rate_received": (received as f64 / received_s.max(1e-9)).round(),
        "t_first_unix": round3(t_first_unix),
        "t_last_unix": round3(t_last_unix),
    });
    Ok(out.to_string())
}
