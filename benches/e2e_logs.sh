#!/usr/bin/env bash
# End-to-end log ingest benchmark: a release `lumen server`, the shared workload of
# ../shared/bench/gen_logs.py (2,000,000 lines over 200 streams), sent with ../shared/bench/send.py once as
# JSON lines and once as Loki push (JSON), each into a fresh data directory; then a flush.
# Prints per run: server CPU µs per line, lines per second, peak RSS, bytes on disk per line.
#
# Usage: benches/e2e_logs.sh [--lines N] [--streams N] [--concurrency N]
# Needs: a release build (cargo build --release), python3.
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
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
OUT=benches/out
mkdir -p "$OUT"

gen() { # format
  local dir="$OUT/work-$1-$LINES-$STREAMS"
  if [ ! -f "$dir/meta.json" ]; then
    rm -rf "$dir"
    python3 "$SHARED/gen_logs.py" --lines "$LINES" --streams "$STREAMS" --format "$1" --out "$dir" >&2
  fi
  echo "$dir"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # name format path content-type
  local name=$1 format=$2 path=$3 ctype=$4
  local work; work=$(gen "$format")
  local data="$OUT/data-$name"
  rm -rf "$data"
  local port; port=$(free_port)
  "$BIN" server --data-dir "$data" --http-addr "127.0.0.1:$port" --mqtt-listen off >"$OUT/server-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  local cpu0; cpu0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local result
  result=$(python3 "$SHARED/send.py" --url "http://127.0.0.1:$port$path" --dir "$work" --content-type "$ctype" \
    --concurrency "$CONC" --pid "$pid")
  curl -sf -X POST "http://127.0.0.1:$port/api/v1/admin/flush" >/dev/null
  local cpu1; cpu1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  local hz; hz=$(getconf CLK_TCK)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  local stored; stored=$(curl -sf -X POST "http://127.0.0.1:$port/api/v1/sql" -d 'SELECT count(*) AS n FROM logs' | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"][0]["n"])')
  local disk; disk=$(du -sb "$data/logs" | awk '{print $1}')
  local parts; parts=$(find "$data/logs" -name '*.parquet' | wc -l)
  # Then what compaction makes of the day (the at-rest size), and what that costs.
  curl -sf -X POST "http://127.0.0.1:$port/api/v1/admin/compact" >/dev/null
  local cpu2; cpu2=$(awk '{print $14+$15}' "/proc/$pid/stat")
  sleep 0.5
  local disk2; disk2=$(du -sb "$data/logs" | awk '{print $1}')
  local rss2; rss2=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$name" "$LINES" "$stored" "$disk" "$parts" "$cpu0" "$cpu1" "$hz" "$rss" "$result" "$disk2" "$cpu2" "$rss2" <<'PY'
import json, sys
name, lines, stored, disk, parts, cpu0, cpu1, hz, rss, result, disk2, cpu2, rss2 = sys.argv[1:]
r = json.loads(result)
lines, stored, disk = int(lines), int(stored), int(disk)
cpu_with_flush = (int(cpu1) - int(cpu0)) / int(hz)
print(json.dumps({
    "run": name, "lines": lines, "stored": stored,
    "lines_per_s": r["lines_per_s"],
    "server_cpu_us_per_line": r["server_cpu_us_per_line"],
    "server_cpu_us_per_line_incl_final_flush": round(cpu_with_flush / lines * 1e6, 2),
    "peak_rss_mb": round(int(rss) / 1024, 1),
    "disk_bytes_per_line": round(disk / lines, 2), "parts": int(parts),
    "compacted_disk_bytes_per_line": round(int(disk2) / lines, 2),
    "compaction_cpu_us_per_line": round((int(cpu2) - int(cpu1)) / int(hz) / lines * 1e6, 2),
    "peak_rss_mb_incl_compaction": round(int(rss2) / 1024, 1),
    "errors": r["errors"],
}))
PY
}

run jsonline jsonline "/insert/jsonline?_stream_fields=namespace,pod,container,app,node" "application/x-ndjson"
run loki loki "/loki/api/v1/push" "application/json"
