#!/usr/bin/env bash
# End-to-end log ingest benchmark: a release `lumen server`, the shared workload of
# ../shared/bench/gen_logs.py (2,000,000 lines over 200 streams), sent with ../shared/bench/send.py once as
# JSON lines and once as Loki push (JSON), each into a fresh data directory; then a flush and a compaction.
# Prints per run: server CPU µs per line (send; + final flush; + compaction), lines per second, RSS right
# after start, peak RSS, bytes on disk per line.
#
# With VL_BIN set to a victoria-logs binary, VictoriaLogs takes the same bodies through the same sender
# right after each Lumen run (JSON lines at /insert/jsonline, Loki JSON at /insert/loki/api/v1/push), is
# flushed with /internal/force_flush, and its compaction is counted until its /metrics shows no active
# merge (vl_active_merges) and no in-memory part; then a summary prints Lumen / VictoriaLogs for every
# figure of the same run. Without VL_BIN the peer is skipped with a message. Its store of the Loki run is
# left in benches/out/data-vl-loki for benches/logql_queries.sh.
#
# Usage: [VL_BIN=/path/to/victoria-logs] [LUMEN_BIN=target/release/lumen] benches/e2e_logs.sh [--lines N] [--streams N] [--concurrency N]
# Needs: a release build (cargo build --release), python3, curl.
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
BIN=${LUMEN_BIN:-target/release/lumen}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
OUT=benches/out
mkdir -p "$OUT"
RESULTS="$OUT/e2e-logs-results.jsonl"
: >"$RESULTS"
if [ -n "${VL_BIN:-}" ]; then
  [ -x "$VL_BIN" ] || { echo "VL_BIN=$VL_BIN is not an executable" >&2; exit 1; }
  echo "peer: $("$VL_BIN" -version 2>/dev/null | head -1)" >&2
else
  echo "VL_BIN is not set: VictoriaLogs skipped (set it to a victoria-logs binary to compare)" >&2
fi

gen() { # format
  local dir="$OUT/work-$1-$LINES-$STREAMS"
  if [ ! -f "$dir/meta.json" ]; then
    rm -rf "$dir"
    python3 "$SHARED/gen_logs.py" --lines "$LINES" --streams "$STREAMS" --format "$1" --out "$dir" >&2
  fi
  echo "$dir"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }   # utime + stime
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }   # VmRSS, VmHWM

run() { # name format path content-type
  local name=$1 format=$2 path=$3 ctype=$4
  local work; work=$(gen "$format")
  local data="$OUT/data-$name"
  rm -rf "$data"
  local port; port=$(free_port)
  "$BIN" server --data-dir "$data" --http-addr "127.0.0.1:$port" --mqtt-listen off >"$OUT/server-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  local rss0; rss0=$(status_kb "$pid" VmRSS)
  local cpu0; cpu0=$(cpu_ticks "$pid")
  local result
  result=$(python3 "$SHARED/send.py" --url "http://127.0.0.1:$port$path" --dir "$work" --content-type "$ctype" \
    --concurrency "$CONC" --pid "$pid")
  curl -sf -X POST "http://127.0.0.1:$port/api/v1/admin/flush" >/dev/null
  local cpu1; cpu1=$(cpu_ticks "$pid")
  local hz; hz=$(getconf CLK_TCK)
  local rss; rss=$(status_kb "$pid" VmHWM)
  local stored; stored=$(curl -sf -X POST "http://127.0.0.1:$port/api/v1/sql" -d 'SELECT count(*) AS n FROM logs' | python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"][0]["n"])')
  local disk; disk=$(du -sb "$data/logs" | awk '{print $1}')
  local parts; parts=$(find "$data/logs" -name '*.parquet' | wc -l)
  # Then what compaction makes of the day (the at-rest size), and what that costs.
  curl -sf -X POST "http://127.0.0.1:$port/api/v1/admin/compact" >/dev/null
  local cpu2; cpu2=$(cpu_ticks "$pid")
  sleep 0.5
  local disk2; disk2=$(du -sb "$data/logs" | awk '{print $1}')
  local rss2; rss2=$(status_kb "$pid" VmHWM)
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$name" "$LINES" "$stored" "$disk" "$parts" "$cpu0" "$cpu1" "$hz" "$rss" "$result" "$disk2" "$cpu2" "$rss2" "$rss0" <<'PY' | tee -a "$RESULTS"
import json, sys
name, lines, stored, disk, parts, cpu0, cpu1, hz, rss, result, disk2, cpu2, rss2, rss0 = sys.argv[1:]
r = json.loads(result)
lines, stored, disk = int(lines), int(stored), int(disk)
cpu_with_flush = (int(cpu1) - int(cpu0)) / int(hz)
print(json.dumps({
    "system": "lumen", "run": name, "lines": lines, "stored": stored,
    "lines_per_s": r["lines_per_s"],
    "server_cpu_us_per_line": r["server_cpu_us_per_line"],
    "server_cpu_us_per_line_incl_final_flush": round(cpu_with_flush / lines * 1e6, 2),
    "peak_rss_mb": round(int(rss) / 1024, 1),
    "disk_bytes_per_line": round(disk / lines, 2), "parts": int(parts),
    "compacted_disk_bytes_per_line": round(int(disk2) / lines, 2),
    "compaction_cpu_us_per_line": round((int(cpu2) - int(cpu1)) / int(hz) / lines * 1e6, 2),
    "peak_rss_mb_incl_compaction": round(int(rss2) / 1024, 1),
    "cpu_us_per_line_incl_flush_and_compaction": round((int(cpu2) - int(cpu0)) / int(hz) / lines * 1e6, 2),
    "rss_after_start_mb": round(int(rss0) / 1024, 1),
    "errors": r["errors"],
}))
PY
}

vl_metric() { # port series-name-or-prefix: the sum of the matching series of VictoriaLogs' /metrics
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}

# VictoriaLogs on the same bodies: a fresh data directory, the same sender, then /internal/force_flush
# (the CPU up to here is "incl. final flush"), then its compaction: until no merge is active and no
# in-memory part is left (its in-memory parts reach disk within -inmemoryDataFlushInterval, 5 s), in three
# polls in a row 0.5 s apart, at most 300 s.
run_vl() { # name format path content-type
  local name=$1 format=$2 path=$3 ctype=$4
  local work; work=$(gen "$format")
  local data="$OUT/data-vl-$name"
  rm -rf "$data"
  local port; port=$(free_port)
  "$VL_BIN" -storageDataPath="$data" -httpListenAddr="127.0.0.1:$port" -retentionPeriod=100y \
    >"$OUT/server-vl-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  local rss0; rss0=$(status_kb "$pid" VmRSS)
  local cpu0; cpu0=$(cpu_ticks "$pid")
  local result
  result=$(python3 "$SHARED/send.py" --url "http://127.0.0.1:$port$path" --dir "$work" --content-type "$ctype" \
    --concurrency "$CONC" --pid "$pid")
  curl -sf "http://127.0.0.1:$port/internal/force_flush" >/dev/null
  local cpu1; cpu1=$(cpu_ticks "$pid")
  local hz; hz=$(getconf CLK_TCK)
  local rss; rss=$(status_kb "$pid" VmHWM)
  local stored; stored=$(curl -sf "http://127.0.0.1:$port/select/logsql/query" --data-urlencode 'query=* | stats count() as n' \
    | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["n"])')
  local quiet=0 polls=0
  while [ "$quiet" -lt 3 ] && [ "$polls" -lt 600 ]; do
    sleep 0.5; polls=$((polls + 1))
    if [ "$(vl_metric "$port" vl_active_merges)" = 0 ] \
      && [ "$(vl_metric "$port" 'vl_storage_parts{type="storage/inmemory"}')" = 0 ]; then
      quiet=$((quiet + 1))
    else
      quiet=0
    fi
  done
  local cpu2; cpu2=$(cpu_ticks "$pid")
  local rss2; rss2=$(status_kb "$pid" VmHWM)
  local merges; merges=$(vl_metric "$port" vl_merges_total)
  local disk2; disk2=$(du -sb "$data" | awk '{print $1}')
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$name" "$LINES" "$stored" "$cpu0" "$cpu1" "$hz" "$rss" "$result" "$disk2" "$cpu2" "$rss2" "$rss0" "$polls" "$merges" <<'PY' | tee -a "$RESULTS"
import json, sys
name, lines, stored, cpu0, cpu1, hz, rss, result, disk2, cpu2, rss2, rss0, polls, merges = sys.argv[1:]
r = json.loads(result)
lines, hz = int(lines), int(hz)
print(json.dumps({
    "system": "victorialogs", "run": name, "lines": lines, "stored": int(stored),
    "lines_per_s": r["lines_per_s"],
    "server_cpu_us_per_line": r["server_cpu_us_per_line"],
    "server_cpu_us_per_line_incl_final_flush": round((int(cpu1) - int(cpu0)) / hz / lines * 1e6, 2),
    "peak_rss_mb": round(int(rss) / 1024, 1),
    "compacted_disk_bytes_per_line": round(int(disk2) / lines, 2),
    "compaction_cpu_us_per_line": round((int(cpu2) - int(cpu1)) / hz / lines * 1e6, 2),
    "compaction_wait_s": int(polls) / 2, "merges_total": int(float(merges)),
    "peak_rss_mb_incl_compaction": round(int(rss2) / 1024, 1),
    "cpu_us_per_line_incl_flush_and_compaction": round((int(cpu2) - int(cpu0)) / hz / lines * 1e6, 2),
    "rss_after_start_mb": round(int(rss0) / 1024, 1),
    "errors": r["errors"],
}))
PY
}

JSONLINE_QS="_stream_fields=namespace,pod,container,app,node"
run jsonline jsonline "/insert/jsonline?$JSONLINE_QS" "application/x-ndjson"
[ -z "${VL_BIN:-}" ] || run_vl jsonline jsonline "/insert/jsonline?$JSONLINE_QS" "application/x-ndjson"
run loki loki "/loki/api/v1/push" "application/json"
[ -z "${VL_BIN:-}" ] || run_vl loki loki "/insert/loki/api/v1/push" "application/json"

# Lumen / VictoriaLogs for each figure, both from this run of the script.
[ -z "${VL_BIN:-}" ] || python3 - "$RESULTS" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {(r["system"], r["run"]): r for r in runs}
keys = ["server_cpu_us_per_line", "server_cpu_us_per_line_incl_final_flush", "compaction_cpu_us_per_line",
        "cpu_us_per_line_incl_flush_and_compaction", "rss_after_start_mb", "peak_rss_mb",
        "peak_rss_mb_incl_compaction", "compacted_disk_bytes_per_line", "lines_per_s"]
for name in ("jsonline", "loki"):
    l, v = by.get(("lumen", name)), by.get(("victorialogs", name))
    if not (l and v):
        continue
    if l["stored"] != v["stored"]:
        print(f"WARNING: {name}: Lumen stored {l['stored']} lines, VictoriaLogs {v['stored']}", file=sys.stderr)
    print(json.dumps({"ratio": name, "lumen_over_victorialogs": {
        k: round(l[k] / v[k], 3) if v.get(k) else None for k in keys}}))
PY
