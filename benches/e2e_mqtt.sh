#!/usr/bin/env bash
# End-to-end MQTT benchmark: --messages (1,000,000) QoS 1 JSON telemetry messages of about 120 bytes from --devices
# (1,000) devices, published by target/release/mqtt_load (benches/src/bin/mqtt_load.rs) over --connections (4)
# connections on topics bench/site<k>/dev<d>/telemetry, into each case in turn, on 127.0.0.1 and fresh state:
#   peer      Debian's Mosquitto relaying to one subscriber (mqtt_load --subscribe: QoS 1, persistent session):
#             the relay rate end to end (publisher start to the subscriber's Nth message) and Mosquitto's CPU.
#   broker    the same Mosquitto with `lumen server --mqtt-broker mqtt://127.0.0.1:PORT --mqtt-topic TEMPLATE` as
#             its subscriber: end to end = publisher start until Lumen's /metrics counts all N messages stored
#             (lumen_mqtt_messages_total, summed over its labels); then one query checks they are queryable.
#   embedded  `lumen server --mqtt-listen 127.0.0.1:PORT`, published to straight; the same figures.
# The machine is shared and noisy: besides the rates, the figures that count are CPU µs per message
# (utime+stime from /proc/PID/stat, from just before the publisher starts until the last message is relayed or
# stored) and each Lumen rate as a ratio to the peer's relay rate measured in the same run. Also reported: the
# publisher's acknowledged rate (its last PUBACK), peak RSS (VmHWM), samples stored and the query's answer.
# Goals (the issue): broker rate >= 0.95 x the peer relay rate; embedded rate >= 3 x the peer relay rate.
#
# Mosquitto config traps (see mosquitto_conf below): max_queued_messages defaults to 1000 and silently drops QoS 1
# messages for a subscriber that falls behind (set to 0: no maximum), and max_inflight_messages (20 by default)
# bounds the unacknowledged messages towards each subscriber (--broker-inflight). mosquitto_pub -l may disconnect
# before its last QoS 1 messages are acknowledged, hence mqtt_load.
#
# Usage: benches/e2e_mqtt.sh [--messages N] [--devices N] [--connections N] [--inflight N] [--broker-inflight N]
#                            [--runs N] [--systems "peer broker embedded"] [--query PROMQL] [--no-build]
# Env:   E2E_OUT=DIR (default benches/out); LUMEN_BIN, MQTT_LOAD, MOSQUITTO_BIN to use other binaries.
# Needs: mosquitto (apt-get install -y mosquitto), python3, curl; builds lumen and mqtt_load unless --no-build.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=1000000
DEVICES=1000
CONNECTIONS=4
INFLIGHT=200
BROKER_INFLIGHT=1000
RUNS=1
SYSTEMS="peer broker embedded"
BUILD=1
TOPIC='bench/{site}/{device}/telemetry'
QUERY='sum(count_over_time(temperature[1h]))'
while [ $# -gt 0 ]; do
  case "$1" in
    --messages) MESSAGES=$2; shift 2 ;;
    --devices) DEVICES=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --inflight) INFLIGHT=$2; shift 2 ;;
    --broker-inflight) BROKER_INFLIGHT=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --query) QUERY=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=${LUMEN_BIN:-target/release/lumen}
LOAD=${MQTT_LOAD:-target/release/mqtt_load}
MOSQ=${MOSQUITTO_BIN:-/usr/sbin/mosquitto}
OUT=${E2E_OUT:-benches/out}/mqtt
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/e2e-mqtt-results.jsonl"
HZ=$(getconf CLK_TCK)
# Every wait is bounded: the whole workload at no less than 2,000 messages/s, plus a minute.
WAIT_S=$((60 + MESSAGES / 2000))

if [ "$BUILD" = 1 ]; then
  cargo build --release -p lumen -p benches --bin lumen --bin mqtt_load >&2
fi
[ -x "$MOSQ" ] || { echo "needs Mosquitto at $MOSQ: apt-get install -y mosquitto" >&2; exit 1; }
[ -x "$LOAD" ] || { echo "no $LOAD: cargo build --release -p benches --bin mqtt_load" >&2; exit 1; }
case " $SYSTEMS " in *" broker "* | *" embedded "*)
  [ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p lumen" >&2; exit 1; } ;;
esac

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# A child that exited is a zombie until waited for, and kill -0 still finds it.
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

PIDS=()
# Stops one process this script started: TERM, up to 5 s, then KILL.
stop() {
  local pid=$1 p rest=()
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
  [ ${#rest[@]} = ${#PIDS[@]} ] && return 0 # not ours, or already stopped
  PIDS=("${rest[@]}")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "e2e_mqtt: $*" >&2; exit 1; }

# wait_port PORT PID NAME LOG: until PORT accepts connections (10 s).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    alive "$2" || fail "$3 exited; see $4"
    sleep 0.1
  done
  fail "$3 does not listen on 127.0.0.1:$1 after 10 s; see $4"
}
# wait_http PORT PID LOG: until Lumen's /ready answers (30 s).
wait_http() {
  for _ in $(seq 300); do
    curl -sf --max-time 2 "http://127.0.0.1:$1/ready" >/dev/null && return 0
    alive "$2" || fail "lumen exited; see $3"
    sleep 0.1
  done
  fail "lumen not ready on 127.0.0.1:$1 after 30 s; see $3"
}
# wait_for CMD-STRING PID WHAT LOG: until the command succeeds (30 s).
wait_for() {
  for _ in $(seq 300); do
    eval "$1" && return 0
    alive "$2" || fail "$3: the process exited; see $4"
    sleep 0.1
  done
  fail "$3: not after 30 s; see $4"
}

# Messages Lumen has stored: lumen_mqtt_messages_total summed over its labels.
stored() {
  { curl -s --max-time 5 "http://127.0.0.1:$1/metrics" || true; } |
    awk '$1 ~ /^lumen_mqtt_messages_total($|\{)/ {s += $2} END {printf "%d\n", s}'
}
metric_sum() { # port name
  { curl -s --max-time 5 "http://127.0.0.1:$1/metrics" || true; } |
    awk -v m="$2" '{n = $1; sub(/\{.*/, "", n)} n == m {s += $2} END {printf "%d\n", s}'
}

# Starts a fresh Mosquitto in DIR on a free port: sets MPID and MPORT.
start_mosquitto() {
  local dir=$1
  MPORT=$(free_port)
  cat >"$dir/mosquitto.conf" <<EOF
listener $MPORT 127.0.0.1
allow_anonymous true
persistence false
# Default 1000: QoS 1 messages beyond it are silently dropped for a subscriber that falls behind. 0: no maximum.
max_queued_messages 0
max_queued_bytes 0
# Unacknowledged QoS 1 messages in flight towards each client (default 20; 0 would be no maximum).
max_inflight_messages $BROKER_INFLIGHT
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
log_type subscribe
connection_messages true
EOF
  "$MOSQ" -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
  MPID=$!
  PIDS+=("$MPID")
  wait_port "$MPORT" "$MPID" mosquitto "$dir/mosquitto.log"
}

LOAD_ARGS=(--messages "$MESSAGES" --devices "$DEVICES" --connections "$CONNECTIONS" --inflight "$INFLIGHT"
  --qos 1 --topic-prefix bench --timeout "$WAIT_S")

run_peer() { # run
  local dir="$OUT/peer" spid m0 m1 mrss
  rm -rf "$dir"; mkdir -p "$dir"
  start_mosquitto "$dir"
  "$LOAD" --port "$MPORT" --subscribe --messages "$MESSAGES" --topic-prefix bench --client-id bench-sub \
    --ready-file "$dir/ready" --timeout "$WAIT_S" >"$dir/sub.json" 2>"$dir/sub.err" &
  spid=$!
  PIDS+=("$spid")
  wait_for "[ -f '$dir/ready' ]" "$spid" "the subscriber's SUBACK" "$dir/sub.err"
  m0=$(cpu_ticks "$MPID")
  "$LOAD" --port "$MPORT" "${LOAD_ARGS[@]}" >"$dir/pub.json" 2>"$dir/pub.err" ||
    fail "the publisher failed: $(cat "$dir/pub.err")"
  wait "$spid" || fail "the subscriber failed: $(cat "$dir/sub.err")"
  m1=$(cpu_ticks "$MPID")
  mrss=$(hwm_kb "$MPID")
  stop "$MPID"
  python3 - "$1" "$dir/pub.json" "$dir/sub.json" "$m0" "$m1" "$mrss" "$HZ" >>"$RESULTS" <<'PY'
import json, sys
run, pub, sub, m0, m1, mrss, hz = sys.argv[1:]
p, s = json.load(open(pub)), json.load(open(sub))
n = p["messages"]
wall = s["t_last_unix"] - p["t_start_unix"]
print(json.dumps({
    "run": int(run), "system": "peer", "messages": n, "received": s["received"],
    "rate": round(n / wall), "wall_s": round(wall, 3), "publisher_rate_acked": p["rate_acked"],
    "mosquitto_cpu_us_per_msg": round((int(m1) - int(m0)) / int(hz) / n * 1e6, 2),
    "mosquitto_peak_rss_mb": round(int(mrss) / 1024, 1),
    "payload_bytes_avg": p["payload_bytes_avg"],
}))
PY
}

# Publishes to PORT and waits until Lumen (LPID, HTTP on HPORT) has stored every message; MPID is the broker in
# between, or empty. Appends the result line of SYSTEM.
measure_lumen() { # run system dir port
  local run=$1 system=$2 dir=$3 port=$4 ppid l0 l1 m0="" m1="" lrss mrss="" n=0 t1 deadline prc=""
  l0=$(cpu_ticks "$LPID")
  if [ -n "$MPID" ]; then m0=$(cpu_ticks "$MPID"); fi
  "$LOAD" --port "$port" "${LOAD_ARGS[@]}" >"$dir/pub.json" 2>"$dir/pub.err" &
  ppid=$!
  PIDS+=("$ppid")
  deadline=$((SECONDS + WAIT_S))
  while :; do
    n=$(stored "$HPORT")
    [ "$n" -ge "$MESSAGES" ] && break
    alive "$LPID" || fail "lumen died with $n of $MESSAGES stored; see $dir/lumen.log"
    if [ -z "$prc" ] && ! alive "$ppid"; then
      prc=0; wait "$ppid" || prc=$?
      [ "$prc" = 0 ] || fail "the publisher failed with $n of $MESSAGES stored: $(cat "$dir/pub.err")"
    fi
    [ "$SECONDS" -lt "$deadline" ] || fail "$system: only $n of $MESSAGES stored after ${WAIT_S}s; see $dir"
    sleep 0.1
  done
  t1=$(date +%s.%N)
  l1=$(cpu_ticks "$LPID")
  if [ -n "$MPID" ]; then m1=$(cpu_ticks "$MPID"); fi
  if [ -z "$prc" ]; then
    wait "$ppid" || fail "the publisher failed: $(cat "$dir/pub.err")"
  fi
  lrss=$(hwm_kb "$LPID")
  if [ -n "$MPID" ]; then mrss=$(hwm_kb "$MPID"); fi
  curl -s --max-time 60 -G "http://127.0.0.1:$HPORT/api/v1/query" --data-urlencode "query=$QUERY" \
    -o "$dir/query.json" || true
  metric_sum "$HPORT" lumen_mqtt_samples_total >"$dir/samples"
  metric_sum "$HPORT" lumen_mqtt_duplicate_messages_total >"$dir/duplicates"
  metric_sum "$HPORT" lumen_mqtt_garbage_messages_total >"$dir/garbage"
  python3 - "$run" "$system" "$dir" "$t1" "$n" "$l0" "$l1" "$lrss" "$m0" "$m1" "$mrss" "$HZ" "$QUERY" \
    >>"$RESULTS" <<'PY'
import json, sys
run, system, d, t1, n_stored, l0, l1, lrss, m0, m1, mrss, hz, query = sys.argv[1:]
p = json.load(open(f"{d}/pub.json"))
n, hz = p["messages"], int(hz)
wall = float(t1) - p["t_start_unix"]
try:
    body = json.load(open(f"{d}/query.json"))
    res = body["data"]["result"]
    answer = float(res[0]["value"][1]) if res else None
except Exception as e:  # reported, not fatal
    answer = f"unparsable: {e}"
out = {
    "run": int(run), "system": system, "messages": n, "stored": int(n_stored),
    "rate": round(n / wall), "wall_s": round(wall, 3), "publisher_rate_acked": p["rate_acked"],
    "lumen_cpu_us_per_msg": round((int(l1) - int(l0)) / hz / n * 1e6, 2),
    "lumen_peak_rss_mb": round(int(lrss) / 1024, 1),
    "samples": int(open(f"{d}/samples").read()), "duplicates": int(open(f"{d}/duplicates").read()),
    "garbage": int(open(f"{d}/garbage").read()),
    "query": query, "query_answer": answer,
}
if m0:
    out["mosquitto_cpu_us_per_msg"] = round((int(m1) - int(m0)) / hz / n * 1e6, 2)
    out["mosquitto_peak_rss_mb"] = round(int(mrss) / 1024, 1)
print(json.dumps(out))
PY
}

run_broker() { # run
  local dir="$OUT/broker"
  rm -rf "$dir"; mkdir -p "$dir"
  start_mosquitto "$dir"
  HPORT=$(free_port)
  "$BIN" server --data-dir "$dir/data" --http-addr "127.0.0.1:$HPORT" --mqtt-listen off \
    --mqtt-broker "mqtt://127.0.0.1:$MPORT" --mqtt-topic "$TOPIC" >"$dir/lumen.log" 2>&1 &
  LPID=$!
  PIDS+=("$LPID")
  wait_http "$HPORT" "$LPID" "$dir/lumen.log"
  # Subscribed once Mosquitto logs the subscription ("<time>: <client id> <qos> <filter>", log_type subscribe).
  wait_for "grep -qE '^[0-9]+: [^ ]+ [0-2] bench/' '$dir/mosquitto.log'" "$LPID" \
    "lumen's subscription on mosquitto" "$dir/lumen.log and $dir/mosquitto.log"
  measure_lumen "$1" broker "$dir" "$MPORT"
  stop "$LPID"
  stop "$MPID"
}

run_embedded() { # run
  local dir="$OUT/embedded" eport
  rm -rf "$dir"; mkdir -p "$dir"
  HPORT=$(free_port)
  eport=$(free_port)
  MPID=""
  "$BIN" server --data-dir "$dir/data" --http-addr "127.0.0.1:$HPORT" --mqtt-listen "127.0.0.1:$eport" \
    --mqtt-topic "$TOPIC" >"$dir/lumen.log" 2>&1 &
  LPID=$!
  PIDS+=("$LPID")
  wait_http "$HPORT" "$LPID" "$dir/lumen.log"
  wait_port "$eport" "$LPID" "lumen's MQTT endpoint" "$dir/lumen.log"
  measure_lumen "$1" embedded "$dir" "$eport"
  stop "$LPID"
}

: >"$RESULTS"
for run in $(seq "$RUNS"); do
  for system in $SYSTEMS; do
    case "$system" in
      peer) run_peer "$run" ;;
      broker) run_broker "$run" ;;
      embedded) run_embedded "$run" ;;
      *) fail "unknown system $system (peer, broker, embedded)" ;;
    esac
    tail -n 1 "$RESULTS"
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peer = {r["run"]: r for r in rows if r["system"] == "peer"}
med = lambda xs: statistics.median(xs) if xs else None
fmt = lambda x, spec: "-" if x is None else format(x, spec)
print()
print(f"MQTT end to end: {rows[0]['messages']:,} QoS 1 messages; medians over {len({r['run'] for r in rows})} run(s);"
      " ratios against the peer relay of the same run")
print(f"{'case':<10} {'msg/s e2e':>10} {'ratio':>7} {'goal':>6} {'acked msg/s':>12} {'Lumen µs/msg':>13}"
      f" {'Lumen MB':>9} {'Mosq µs/msg':>12} {'stored':>9} {'query':>12}")
goals = {"peer": None, "broker": 0.95, "embedded": 3.0}
for system in ("peer", "broker", "embedded"):
    rs = [r for r in rows if r["system"] == system]
    if not rs:
        continue
    ratios = [r["rate"] / peer[r["run"]]["rate"] for r in rs if r["run"] in peer]
    ratio = med(ratios) if system != "peer" else None
    goal = goals[system]
    verdict = "-" if goal is None or ratio is None else ("met" if ratio >= goal else "MISSED")
    q = [r["query_answer"] for r in rs if "query_answer" in r] or ["-"]
    print(f"{system:<10} {fmt(med([r['rate'] for r in rs]), ',.0f'):>10} {fmt(ratio, '.2f'):>7} {verdict:>6}"
          f" {fmt(med([r['publisher_rate_acked'] for r in rs]), ',.0f'):>12}"
          f" {fmt(med([r['lumen_cpu_us_per_msg'] for r in rs if 'lumen_cpu_us_per_msg' in r]), '.2f'):>13}"
          f" {fmt(med([r['lumen_peak_rss_mb'] for r in rs if 'lumen_peak_rss_mb' in r]), '.1f'):>9}"
          f" {fmt(med([r['mosquitto_cpu_us_per_msg'] for r in rs if 'mosquitto_cpu_us_per_msg' in r]), '.2f'):>12}"
          f" {fmt(med([r.get('stored', r.get('received')) for r in rs]), ',.0f'):>9} {str(q[-1]):>12}")
print("goals: broker >= 0.95 x peer relay rate; embedded >= 3 x peer relay rate (ratio = median of per-run ratios)")
PY
