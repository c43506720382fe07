#!/usr/bin/env bash
# SQL over metrics against PromQL (issue 21 §5), on one release server holding the 1,000,000-sample,
# 2,000-series workload of ../shared/bench/gen_metrics.py (sent over remote write, then flushed and
# compacted into parts). Two questions, each asked both ways, REPS times, and the answers compared:
#   sum   the sum by mode of every node_cpu_seconds_total sample over the whole range
#         SQL:    SELECT mode, sum(value) FROM samples WHERE metric = 'node_cpu_seconds_total' GROUP BY mode
#         PromQL: sum by (mode) (sum_over_time(node_cpu_seconds_total[RANGE])) at the last scrape
#   one   every sample of one series over the whole range
#         SQL:    SELECT time, value FROM samples WHERE metric = 'node_load1' AND instance = 'node-00:9100'
#         PromQL: node_load1{instance="node-00:9100"}[RANGE] at the last scrape
# Prints per question and language: median and min wall time (curl's time_total) and the server's CPU time
# per query (utime+stime over the REPS queries / REPS).
#
# Usage: benches/sql_metrics.sh [--reps N]
# Needs: python3, curl, a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=9
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
SHARED=../shared/bench
BIN=target/release/lumen
OUT=${E2E_OUT:-benches/out}/sql-metrics
rm -rf "$OUT"; mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PID=""
trap 'if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
HZ=$(getconf CLK_TCK)

END=$(( $(date +%s) / 15 * 15 ))
python3 "$SHARED/gen_metrics.py" "$OUT/bodies" "$END" > "$OUT/gen.json"
START=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["start_s"])' "$OUT/gen.json")
RANGE=$(( END - START + 60 ))s

PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
RUST_LOG=warn "$BIN" server --http-addr "127.0.0.1:$PORT" --otlp-grpc-addr 127.0.0.1:0 --mqtt-listen off \
  --data-dir "$OUT/data" > "$OUT/log" 2>&1 &
PID=$!
for _ in $(seq 1 300); do curl -sf -o /dev/null "$BASE/ready" && break; sleep 0.1; done
python3 "$SHARED/send.py" --url "$BASE/api/v1/write" --dir "$OUT/bodies" --per-shard \
  --content-type application/x-protobuf --header 'Content-Encoding: snappy' \
  --header 'X-Prometheus-Remote-Write-Version: 0.1.0' > /dev/null
curl -sf -XPOST "$BASE/api/v1/admin/compact" > /dev/null

sql() { curl -s -o "$OUT/answer.json" -w '%{time_total}\n' -XPOST "$BASE/api/v1/sql" --data-binary "$1"; }
promql() { curl -s -o "$OUT/answer.json" -w '%{time_total}\n' "$BASE/api/v1/query" --data-urlencode "query=$1" --data-urlencode "time=$END"; }

measure() { # name lang query
  local times=() c0 c1
  "$2" "$3" > /dev/null  # warm-up, and the answer kept
  cp "$OUT/answer.json" "$OUT/answer-$1-$2.json"
  c0=$(cpu_ticks "$PID")
  for _ in $(seq 1 "$REPS"); do times+=("$("$2" "$3")"); done
  c1=$(cpu_ticks "$PID")
  python3 - "$1" "$2" "$(( c1 - c0 ))" "$HZ" "$REPS" "${times[@]}" <<'EOF'
import json, statistics, sys
name, lang, ticks, hz, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t = sorted(float(x) * 1000 for x in sys.argv[6:])
print(json.dumps({"question": name, "lang": lang, "median_ms": round(statistics.median(t), 1), "min_ms": round(t[0], 1),
                  "server_cpu_ms_per_query": round(ticks / hz * 1000 / reps, 1)}))
EOF
}

{
  measure sum sql "SELECT mode, sum(value) AS v FROM samples WHERE metric = 'node_cpu_seconds_total' GROUP BY mode"
  measure sum promql "sum by (mode) (sum_over_time(node_cpu_seconds_total[$RANGE]))"
  measure one sql "SELECT time, value FROM samples WHERE metric = 'node_load1' AND instance = 'node-00:9100' ORDER BY time"
  measure one promql "node_load1{instance=\"node-00:9100\"}[$RANGE]"
} | tee "$OUT/results.jsonl"

# The same answers both ways.
python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
load = lambda n: json.load(open(f"{out}/answer-{n}.json"))
s = {r["mode"]: r["v"] for r in load("sum-sql")["rows"]}
p = {r["metric"]["mode"]: float(r["value"][1]) for r in load("sum-promql")["data"]["result"]}
assert s.keys() == p.keys(), (s.keys(), p.keys())
for k in s:
    assert abs(s[k] - p[k]) <= 1e-9 * abs(p[k]), (k, s[k], p[k])
rows = load("one-sql")["rows"]
vals = [float(v[1]) for v in load("one-promql")["data"]["result"][0]["values"]]
assert [r["value"] for r in rows] == vals, "one-series answers differ"
print(f"answers agree: {len(s)} modes, {len(rows)} samples of one series")
EOF
