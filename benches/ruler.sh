#!/usr/bin/env bash
# Rule evaluation benchmark (issue 20): 1,000 recording rules over the 2,000-series metric workload of
# ../shared/bench/gen_metrics.py (node_exporter-like, 20 instances, 500 scrapes at 15 s, generated to end
# now so that the rules see current data), in Lumen and in Debian's Prometheus, one after the other on
# 127.0.0.1, each on a fresh data directory:
#   1. start the server with the rules (10 groups of 100 rules, interval INTERVAL), send the workload over
#      remote write (../shared/bench/send.py --per-shard), wait one interval;
#   2. measure the server's CPU (utime+stime of /proc/PID/stat) over WINDOW seconds;
#   3. the same with no rules (an empty rule file): the baseline of an idle server holding the same data.
# CPU per evaluation cycle = (CPU with rules - CPU without) / cycles in the window, where one cycle
# evaluates all 1,000 rules. Also printed: the groups' own last cycle durations (lumen_ruler_… and
# prometheus_rule_group_last_duration_seconds, summed over the 10 groups) and the failures counted.
# The rules (RULES below, cycled with a different multiplier per rule so no two are the same) are the kind a
# node dashboard's recording rules are: rates of counters by instance/mode/device, sums and averages of
# gauges, ratios.
#
# Usage: benches/ruler.sh [--window SECONDS] [--interval SECONDS] [--systems "lumen prometheus"]
# Needs: python3 (cramjam for snappy), a release build (cargo build --release), apt-get install prometheus.
set -euo pipefail
cd "$(dirname "$0")/.."
WINDOW=60
INTERVAL=5
SYSTEMS="lumen prometheus"
while [ $# -gt 0 ]; do
  case "$1" in
    --window) WINDOW=$2; shift 2 ;;
    --interval) INTERVAL=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
SHARED=../shared/bench
BIN=target/release/lumen
PROM_BIN=${PROM_BIN:-/usr/bin/prometheus}
OUT=${E2E_OUT:-benches/out}/ruler
rm -rf "$OUT"; mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SERVER_PID=""
cleanup() { if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
HZ=$(getconf CLK_TCK)

# The workload, ending now.
END=$(( $(date +%s) / 15 * 15 ))
python3 "$SHARED/gen_metrics.py" "$OUT/bodies" "$END" > "$OUT/gen.json"

# 1,000 recording rules in 10 groups.
python3 - "$OUT/rules.yaml" "$INTERVAL" <<'EOF'
import sys
out, interval = sys.argv[1], sys.argv[2]
RULES = [
    'sum by (instance, mode) (rate(node_cpu_seconds_total[5m])) * {k}',
    'sum by (instance) (rate(node_cpu_seconds_total{{mode!="idle"}}[5m])) * {k}',
    'avg by (mode) (rate(node_cpu_seconds_total[5m])) * {k}',
    '(1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes) * {k}',
    'sum by (instance, device) (rate(node_network_receive_bytes_total[5m])) * {k}',
    'sum by (instance) (rate(node_network_transmit_bytes_total{{device!="lo"}}[5m])) * {k}',
    'max by (instance) (rate(node_disk_io_time_seconds_total[5m])) * {k}',
    'sum by (instance) (rate(node_disk_read_bytes_total[5m]) + rate(node_disk_written_bytes_total[5m])) * {k}',
    'avg_over_time(node_load1[5m]) * {k}',
    'topk(3, node_load5) * {k}',
]
with open(out, "w") as f:
    f.write("groups:\n")
    n = 0
    for g in range(10):
        f.write(f"- name: bench-{g}\n  interval: {interval}s\n  rules:\n")
        for r in range(100):
            expr = RULES[n % len(RULES)].format(k=1 + n // len(RULES))
            f.write(f"  - record: bench:rule_{n}\n    expr: '{expr}'\n")
            n += 1
EOF
printf 'groups: []\n' > "$OUT/empty.yaml"

send() { # url
  python3 "$SHARED/send.py" --url "$1" --dir "$OUT/bodies" --per-shard \
    --content-type application/x-protobuf --header 'Content-Encoding: snappy' \
    --header 'X-Prometheus-Remote-Write-Version: 0.1.0' > /dev/null
}

wait_ready() { # url
  for _ in $(seq 1 300); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "not ready: $1" >&2; return 1
}

start() { # system rules-file dir -> sets SERVER_PID, BASE
  local port; port=$(free_port)
  BASE="http://127.0.0.1:$port"
  mkdir -p "$3"
  case "$1" in
    lumen)
      printf '[ruler]\nrule_files = ["%s"]\n' "$2" > "$3/lumen.toml"
      RUST_LOG=warn "$BIN" server --http-addr "127.0.0.1:$port" --otlp-grpc-addr 127.0.0.1:0 --mqtt-listen off \
        --data-dir "$3/data" --config "$3/lumen.toml" > "$3/log" 2>&1 &
      SERVER_PID=$!; wait_ready "$BASE/ready" ;;
    prometheus)
      printf 'global:\n  evaluation_interval: %ss\nrule_files:\n- %s\nscrape_configs: []\n' "$INTERVAL" "$2" > "$3/prometheus.yml"
      "$PROM_BIN" --config.file="$3/prometheus.yml" --storage.tsdb.path="$3/data" --web.listen-address="127.0.0.1:$port" \
        --web.enable-remote-write-receiver > "$3/log" 2>&1 &
      SERVER_PID=$!; wait_ready "$BASE/-/ready" ;;
  esac
}

metric_sum() { # url name-regex
  curl -s "$1/metrics" | awk -v re="$2" '$1 ~ re && $1 !~ /^#/ {s += $NF} END {printf "%.6f", s+0}'
}

measure() { # system rules-file tag
  local dir="$OUT/$1-$3"
  start "$1" "$2" "$dir"
  send "$BASE/api/v1/write"
  sleep "$INTERVAL"; sleep 2
  local c0 c1
  c0=$(cpu_ticks "$SERVER_PID")
  sleep "$WINDOW"
  c1=$(cpu_ticks "$SERVER_PID")
  local cpu_s; cpu_s=$(python3 -c "print(($c1 - $c0) / $HZ)")
  local dur fail evals
  case "$1" in
    lumen)
      dur=$(metric_sum "$BASE" '^lumen_ruler_group_last_duration_seconds')
      fail=$(metric_sum "$BASE" '^lumen_ruler_evaluation_failures_total')
      evals=$(metric_sum "$BASE" '^lumen_ruler_evaluations_total') ;;
    prometheus)
      dur=$(metric_sum "$BASE" '^prometheus_rule_group_last_duration_seconds')
      fail=$(metric_sum "$BASE" '^prometheus_rule_evaluation_failures_total')
      evals=$(metric_sum "$BASE" '^prometheus_rule_evaluations_total') ;;
  esac
  # A recorded series, to see the rules ran over the data.
  local n; n=$(curl -s "$BASE/api/v1/query" --data-urlencode 'query=count({__name__=~"bench:rule_.*"})' | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)')
  cleanup
  printf '{"system":"%s","rules":"%s","window_s":%s,"cpu_s":%s,"group_last_duration_sum_s":%s,"failures":%s,"evaluations":%s,"recorded_series":%s}\n' \
    "$1" "$3" "$WINDOW" "$cpu_s" "$dur" "$fail" "$evals" "$n" | tee -a "$OUT/results.jsonl"
}

for sys in $SYSTEMS; do
  measure "$sys" "$OUT/rules.yaml" rules
  measure "$sys" "$OUT/empty.yaml" none
done

python3 - "$OUT/results.jsonl" "$WINDOW" "$INTERVAL" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
window, interval = float(sys.argv[2]), float(sys.argv[3])
cycles = window / interval
by = {(r["system"], r["rules"]): r for r in rows}
out = {}
for s in sorted({r["system"] for r in rows}):
    w, wo = by[(s, "rules")], by[(s, "none")]
    per_cycle_ms = (w["cpu_s"] - wo["cpu_s"]) / cycles * 1000
    out[s] = per_cycle_ms
    print(f"{s:11s} CPU per cycle of 1,000 rules: {per_cycle_ms:8.1f} ms  (with rules {w['cpu_s']:.2f} s, idle {wo['cpu_s']:.2f} s over {window:.0f} s)"
          f"  groups' own last cycle: {w['group_last_duration_sum_s']*1000:.1f} ms  failures: {w['failures']:.0f}  recorded series: {w['recorded_series']}")
if "lumen" in out and "prometheus" in out and out["prometheus"] > 0:
    print(f"lumen / prometheus: {out['lumen'] / out['prometheus']:.2f}x")
EOF
