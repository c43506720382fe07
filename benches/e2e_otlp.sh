#!/usr/bin/env bash
# OTLP logs ingest against the Loki push path, end to end, on one workload: ../shared/bench/gen_logs.py
# (2,000,000 Loghub lines over 200 Kubernetes-like streams) as Loki push JSON, re-encoded by
# `otlp_bodies` (benches/src/bin) into Loki push protobuf+snappy and OTLP logs protobuf, plain and gzip,
# with the same streams, lines and timestamps. Each encoding goes into a fresh release `lumen server`
# with ../shared/bench/send.py (HTTP) or benches/otlp_grpc_send.py (OTLP gRPC, grpcio), then a flush.
# Prints per run: server CPU µs per line (during the send, and with the final flush), lines/s, peak RSS,
# lines stored, bytes on disk per line.
#
# Usage: benches/e2e_otlp.sh [--lines N] [--streams N] [--concurrency N] [--runs N] [--only run1,run2]
# Needs: cargo build --release && cargo build --release -p benches --bin otlp_bodies; python3 with grpcio
# (scripts/test installs it with the OpenTelemetry SDK), curl.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=2000000
STREAMS=200
CONC=4
RUNS=1
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lines) LINES=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
SHARED=../shared/bench
BIN=target/release/lumen
CONV=target/release/otlp_bodies
[ -x "$BIN" ] && [ -x "$CONV" ] || {
  echo "build first: cargo build --release && cargo build --release -p benches --bin otlp_bodies" >&2; exit 1; }
OUT=benches/out
mkdir -p "$OUT"

LOKI="$OUT/work-loki-$LINES-$STREAMS"
if [ ! -f "$LOKI/meta.json" ]; then
  rm -rf "$LOKI"
  python3 "$SHARED/gen_logs.py" --lines "$LINES" --streams "$STREAMS" --format loki --out "$LOKI" >&2
fi
OTLP="$OUT/work-otlp-$LINES-$STREAMS"
if [ ! -f "$OTLP/pb/meta.json" ]; then
  rm -rf "$OTLP"
  "$CONV" --input "$LOKI" --otlp "$OTLP/pb" --otlp-gzip "$OTLP/gz" --loki-proto "$OTLP/loki-pb"
fi

# The OTLP runs name streams by the same five attributes the Loki runs label them with.
CONFIG="$OUT/otlp-bench.toml"
cat >"$CONFIG" <<'TOML'
[otlp]
stream_attributes = ["service.name", "k8s.namespace.name", "k8s.pod.name", "k8s.container.name", "k8s.node.name"]
TOML

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # name dir path content-type [extra send.py args...]; path "grpc" sends over OTLP gRPC instead
  local name=$1 work=$2 path=$3 ctype=$4; shift 4
  [ -z "$ONLY" ] || [[ ",$ONLY," == *",$name,"* ]] || return 0
  local data="$OUT/data-$name"
  rm -rf "$data"
  local port; port=$(free_port)
  local grpc; grpc=$(free_port)
  "$BIN" server --config "$CONFIG" --data-dir "$data" --http-addr "127.0.0.1:$port" --otlp-grpc-addr "127.0.0.1:$grpc" \
    --mqtt-listen off >"$OUT/server-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  local cpu0; cpu0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local result
  if [ "$path" = grpc ]; then
    result=$(python3 benches/otlp_grpc_send.py --target "127.0.0.1:$grpc" --dir "$work" --concurrency "$CONC" \
      --pid "$pid" "$@")
  else
    result=$(python3 "$SHARED/send.py" --url "http://127.0.0.1:$port$path" --dir "$work" --content-type "$ctype" \
      --concurrency "$CONC" --pid "$pid" "$@")
  fi
  curl -sf -X POST "http://127.0.0.1:$port/api/v1/admin/flush" >/dev/null
  local cpu1; cpu1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local hz; hz=$(getconf CLK_TCK)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  local stored; stored=$(curl -sf -X POST "http://127.0.0.1:$port/api/v1/sql" -d 'SELECT count(*) AS n FROM logs' | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"][0]["n"])')
  local disk; disk=$(du -sb "$data/logs" | awk '{print $1}')
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$name" "$LINES" "$stored" "$disk" "$cpu0" "$cpu1" "$hz" "$rss" "$result" <<'PY'
import json, sys
name, lines, stored, disk, cpu0, cpu1, hz, rss, result = sys.argv[1:]
r = json.loads(result)
lines = int(lines)
print(json.dumps({
    "run": name, "lines": lines, "stored": int(stored),
    "lines_per_s": r["lines_per_s"],
    "server_cpu_us_per_line": r["server_cpu_us_per_line"],
    "server_cpu_us_per_line_incl_final_flush": round((int(cpu1) - int(cpu0)) / int(hz) / lines * 1e6, 2),
    "peak_rss_mb": round(int(rss) / 1024, 1),
    "disk_bytes_per_line": round(int(disk) / lines, 2),
    "errors": r["errors"],
}))
PY
}

for _ in $(seq "$RUNS"); do
  run loki-json "$LOKI" /loki/api/v1/push application/json
  run loki-proto "$OTLP/loki-pb" /loki/api/v1/push application/x-protobuf
  run otlp-proto "$OTLP/pb" /v1/logs application/x-protobuf
  run otlp-proto-gzip "$OTLP/gz" /v1/logs application/x-protobuf --header "Content-Encoding: gzip"
  run otlp-grpc "$OTLP/pb" grpc -
  run otlp-grpc-gzip "$OTLP/pb" grpc - --gzip
done
