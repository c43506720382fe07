#!/usr/bin/env bash
# End-to-end metrics benchmark: Prometheus remote-write ingest of the shared workload of
# ../shared/bench/gen_metrics.py (20 node_exporter-like instances x 100 series = 2,000 series, 500 scrapes at
# 15 s = 1,000,000 samples, snappy protobuf bodies of 2,000 samples over 4 shards) sent with
# ../shared/bench/send.py --per-shard, into each system in turn on a fresh data directory on 127.0.0.1:
#   lumen            target/release/lumen server; POST /api/v1/write; flush and compact via /api/v1/admin/*;
#                    measured on DIR/metrics
#   victoriametrics  Debian `victoria-metrics` (/usr/bin/victoria-metrics); flush /internal/force_flush, then
#                    /internal/force_merge (its compaction, asynchronous: waited for until the server is idle);
#                    measured on data/ + indexdb/. Right after force_flush (1.79) most data is still in memory
#                    parts, so its "after flush" figure is tiny: read the 5 s / merged / after-shutdown ones
#   prometheus       Debian `prometheus` with the remote-write receiver and a config with no scrape jobs; no
#                    flush exists (the WAL is the durable copy), so "after flush" is wal + chunks_head; then
#                    POST /api/v1/admin/tsdb/snapshot writes the head into a block, measured on its own
# Prints one JSON line per run: server CPU µs per sample (utime+stime from /proc/PID/stat, during the send and
# from before the send to after the flush), samples/s, peak RSS (VmHWM), bytes per sample on disk, samples
# stored (counted back with queries), and the wall time of three range queries over the whole data span of
# 2 h 05 min (start = the workload's start_s, 15 s before the first scrape; end = its end_s, the last scrape;
# step = 15 s, what Grafana sends for such a panel), each run QREPS times: median, min, first, series and
# points returned; the last answer is kept as OUT/query-SYSTEM-NAME.json. Ends with a table of medians over the runs and a check that every system returned the same series
# counts. The shared workload has no histograms (no `_bucket` series): benches/gen_histograms.py makes a second,
# classic-histogram workload over the same time range (http_request_duration_seconds_{bucket,sum,count}: 20
# instances x 2 handlers x (12 le + sum + count) = 560 series, 280,000 samples, same body layout), for a fourth
# query, histogram_quantile; the third, a `quantile` of summed rates, is kept as it was. See QUERIES below.
# Order in each run, so that the histograms change none of the ingest figures: start on a fresh directory, send the
# shared workload, flush, measure CPU/RSS/disk (and compact/merge/snapshot), stop the server and measure the
# directory at rest (all as before the histograms existed); then restart the server on the same directory (for
# Prometheus with an out-of-order window, see prometheus-ooo.yml below), send the histogram bodies (hist_* fields),
# count both workloads back (stored, hist_stored), wait until the server is idle, and run the queries on this
# restarted server, whose peak RSS is peak_rss_mb_incl_queries.
#
# Usage: [LUMEN_BIN=target/release/lumen] benches/e2e_metrics.sh [--runs N] [--systems "lumen victoriametrics prometheus"] [--query-reps N]
# Env:   E2E_OUT=DIR (default benches/out) for bodies, data directories, logs and results.
# Needs: python3 (with `cramjam` for real snappy compression of the bodies: pip install cramjam), curl; for
#        lumen a release build (cargo build --release); the peers as Debian packages:
#        apt-get install -y victoria-metrics prometheus
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=1
SYSTEMS="lumen victoriametrics prometheus"
QREPS=7
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --query-reps) QREPS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
SHARED=../shared/bench
BIN=${LUMEN_BIN:-target/release/lumen}
VM_BIN=${VM_BIN:-/usr/bin/victoria-metrics}
PROM_BIN=${PROM_BIN:-/usr/bin/prometheus}
OUT=${E2E_OUT:-benches/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/e2e-metrics-results.jsonl"
STEP=15

# The three range queries (what a Grafana node-exporter dashboard sends for a panel):
#  rate      every CPU counter (640 series). `rate({__name__=~".+_total"}[5m])` over all 1,440 counters is not
#            usable: dropping __name__ leaves duplicate label sets (receive_bytes vs receive_packets of one
#            device), which Prometheus rejects ("vector cannot contain metrics with the same labelset").
#  sum_by    per-mode CPU rate summed over instances and CPUs (8 series).
#  quantile  the p90 over instances of the summed network receive rate (1 series): the stand-in used before the
#            histogram workload existed (an aggregation quantile, not a bucket interpolation); kept so that figures
#            stay comparable with earlier runs.
#  histogram_quantile  the p90 request latency over all instances and handlers, from the classic histogram of
#            gen_histograms.py: reads the 480 `_bucket` series, sums them by le (12 series), returns 1 series.
QUERY_NAMES=(rate sum_by quantile histogram_quantile)
QUERIES=(
  'rate(node_cpu_seconds_total[5m])'
  'sum by (mode) (rate(node_cpu_seconds_total[5m]))'
  'quantile(0.9, sum by (instance) (rate(node_network_receive_bytes_total[5m])))'
  'histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))'
)
HIST_PREFIX=http_request_duration_seconds
# Counts the stored samples back: per metric name (from /api/v1/label/__name__/values),
# sum(count_over_time({__name__="NAME"}[3h])) at end + 60 s, the window longer than the data span.
COUNT_WINDOW=3h

# Bodies ending at the current hour (rounded down), generated once; made again when more than a day old (or
# ending in the future), so that no system rejects them as too old (retention: Lumen 30 d by default,
# VictoriaMetrics 1 month; Prometheus' empty head takes any age, then only ~1 h behind its newest sample).
gen() {
  local dir="$OUT/work-metrics" now end; now=$(date +%s)
  if [ -f "$dir/meta.json" ]; then
    end=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end_s"])' "$dir/meta.json")
    if [ $((now - end)) -gt 86400 ] || [ "$end" -gt "$now" ]; then rm -rf "$dir"; fi
  fi
  if [ ! -f "$dir/meta.json" ]; then
    rm -rf "$dir"
    python3 -c 'import cramjam' 2>/dev/null || echo "warning: no cramjam: bodies are uncompressed snappy literals" >&2
    python3 "$SHARED/gen_metrics.py" "$dir" $((now / 3600 * 3600)) >&2
  fi
  echo "$dir"
}

# The histogram bodies for the same END as the shared workload's bodies in $1 (made again when that changes).
gen_hist() {
  local dir="$OUT/work-histograms" end hend=""
  end=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end_s"])' "$1/meta.json")
  [ -f "$dir/meta.json" ] && hend=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end_s"])' "$dir/meta.json")
  if [ "$hend" != "$end" ]; then
    rm -rf "$dir"
    python3 benches/gen_histograms.py "$dir" "$end" >&2
  fi
  echo "$dir"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12+$13}'; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
du_b() { du -sb "$@" 2>/dev/null | awk '{s+=$1} END {print s+0}'; }
# Waits until the server used less than 2 ticks of CPU in a second (at most $2 seconds).
wait_idle() {
  local pid=$1 max=$2 a b
  for _ in $(seq "$max"); do
    a=$(cpu_ticks "$pid"); sleep 1; b=$(cpu_ticks "$pid")
    [ $((b - a)) -lt 2 ] && return 0
  done
  echo "warning: pid $pid still busy after ${max}s" >&2
}

SERVER_PID=""
cleanup() { if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi; }
trap cleanup EXIT

# Range queries: QREPS runs each, the body of the last kept; then one JSON object per query.
run_queries() { # base-url start end tag
  local base=$1 start=$2 end=$3 tag=$4 i rep
  local out="["
  for i in "${!QUERIES[@]}"; do
    local f="$OUT/query-$tag-${QUERY_NAMES[$i]}.json" times=""
    for rep in $(seq "$QREPS"); do
      times+="$(curl -s -G -o "$f" -w '%{time_total}:%{http_code}' "$base/api/v1/query_range" \
        --data-urlencode "query=${QUERIES[$i]}" --data-urlencode "start=$start" --data-urlencode "end=$end" \
        --data-urlencode "step=$STEP" || echo "0:000") "
    done
    local js; js=$(python3 - "${QUERY_NAMES[$i]}" "$f" $times <<'PY'
import json, statistics, sys
name, f, *runs = sys.argv[1:]
t = [float(r.split(":")[0]) * 1000 for r in runs]
codes = sorted({r.split(":")[1] for r in runs})
series = points = None; status = "unparsable"
try:
    body = json.load(open(f))
    status = body.get("status")
    if status == "success":
        res = body["data"]["result"]
        series = len(res)
        points = sum(len(s.get("values", [])) for s in res)
    else:
        status = f'{status}: {body.get("error", "")[:200]}'
except Exception as e:
    status = f"unparsable: {e!r}"[:200]
print(json.dumps({"query": name, "median_ms": round(statistics.median(t), 1), "min_ms": round(min(t), 1),
                  "first_ms": round(t[0], 1), "series": series, "points": points, "http": codes, "status": status}))
PY
)
    out+="$js,"
  done
  echo "${out%,}]"
}

count_stored() { # base-url end; prints "MAIN HIST": the samples of the shared workload, of the histogram one
  # Per metric name: count_over_time over a regex of several names fails on Prometheus (dropping __name__
  # leaves duplicate label sets).
  python3 - "$1" "$2" "$COUNT_WINDOW" "$HIST_PREFIX" <<'PY'
import json, sys, urllib.parse, urllib.request
base, end, window, hist_prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def get(path, **q):
    return json.load(urllib.request.urlopen(f"{base}{path}?{urllib.parse.urlencode(q)}", timeout=120))
try:
    total = hist = 0
    for n in get("/api/v1/label/__name__/values")["data"]:
        r = get("/api/v1/query", query=f'sum(count_over_time({{__name__="{n}"}}[{window}]))', time=end + 60)
        c = sum(int(float(x["value"][1])) for x in r["data"]["result"])
        if n.startswith(hist_prefix + "_"):
            hist += c
        else:
            total += c
    print(total, hist)
except Exception as e:
    print(f"count_stored: {e!r}", file=sys.stderr)
    print(-1, -1)
PY
}

wait_ready() { # url pid
  for _ in $(seq 300); do
    curl -sf "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "server exited early" >&2; return 1; }
    sleep 0.1
  done
  echo "server not ready: $1" >&2; return 1
}

# Starts system $1 on directory $2 (logging to $3) on a free port; phase $4: "ingest" (the measured one, on a fresh
# directory) or "queries" (the restart on the same directory). Sets SERVER_PID, base, ready and measure, which are
# run()'s locals.
start_server() {
  local sys=$1 data=$2 log=$3 phase=$4
  local port; port=$(free_port)
  base="http://127.0.0.1:$port"
  case "$sys" in
    lumen)
      [ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; return 1; }
      # The results cache is off, as VictoriaMetrics' is below: repeated queries measure the engine (its
      # data caches, like VictoriaMetrics' block caches, stay on). benches/promql_refresh.py measures the
      # results caches of both on a dashboard's refreshes.
      printf '[query]\nresults_cache_max_bytes = 0\n' >"$OUT/lumen-no-results-cache.toml"
      "$BIN" server --config "$OUT/lumen-no-results-cache.toml" --data-dir "$data" --http-addr "127.0.0.1:$port" \
        --mqtt-listen off >"$log" 2>&1 &
      ready="$base/ready"; measure="$data/metrics" ;;
    victoriametrics)
      # The response cache is off so that repeated queries measure the engine, not the cache; latencyOffset 0
      # so that samples a few seconds old are visible (the bodies end at the current hour).
      "$VM_BIN" -storageDataPath="$data" -httpListenAddr="127.0.0.1:$port" -search.disableCache \
        -search.latencyOffset=0s >"$log" 2>&1 &
      # data/ and indexdb/ only: cache/ is the caches VictoriaMetrics saves at shutdown (a few MB, rebuildable).
      ready="$base/health"; measure="$data/data $data/indexdb" ;;
    prometheus)
      # The restart for the queries gets an out-of-order window: its head then ends at the shared workload's last
      # sample, and without one it rejects as out of bounds every histogram sample more than 1 h older (half of them).
      local conf="$OUT/prometheus-empty.yml"
      printf 'global:\n  scrape_interval: 15s\nscrape_configs: []\n' >"$conf"
      if [ "$phase" = queries ]; then
        conf="$OUT/prometheus-ooo.yml"
        printf 'global:\n  scrape_interval: 15s\nscrape_configs: []\nstorage:\n  tsdb:\n    out_of_order_time_window: 3h\n' >"$conf"
      fi
      "$PROM_BIN" --config.file="$conf" --storage.tsdb.path="$data" \
        --web.listen-address="127.0.0.1:$port" --web.enable-remote-write-receiver --web.enable-admin-api >"$log" 2>&1 &
      ready="$base/-/ready"; measure="$data" ;;
    *) echo "unknown system $sys" >&2; return 1 ;;
  esac
  SERVER_PID=$!
  wait_ready "$ready" "$SERVER_PID" || { cleanup; SERVER_PID=""; return 1; }
}

# Sends the bodies in directory $2 to system $1 at $base (server $3), writing send.py's errors to $4; prints
# send.py's JSON line.
send_bodies() {
  python3 "$SHARED/send.py" --url "$base/api/v1/write" --dir "$2" --per-shard \
    --content-type application/x-protobuf --header 'Content-Encoding: snappy' \
    --header 'X-Prometheus-Remote-Write-Version: 0.1.0' --pid "$3" 2>"$4" || true
  [ -s "$4" ] && sed 's/^/  send: /' "$4" | head -5 >&2
  return 0
}

run() { # system run-number
  local sys=$1 runno=$2
  local work; work=$(gen)
  local hwork; hwork=$(gen_hist "$work")
  local meta="$work/meta.json"
  local start end samples hsamples
  read -r start end samples < <(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["start_s"], m["end_s"], m["samples"])' "$meta")
  hsamples=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["samples"])' "$hwork/meta.json")
  local data="$OUT/data-metrics-$sys" log="$OUT/server-metrics-$sys.log"
  rm -rf "$data"; mkdir -p "$data"
  local base ready measure
  start_server "$sys" "$data" "$log" ingest || return 1
  local pid=$SERVER_PID
  local hz; hz=$(getconf CLK_TCK)
  local cpu0; cpu0=$(cpu_ticks "$pid")
  local result
  result=$(send_bodies "$sys" "$work" "$pid" "$OUT/send-metrics-$sys.err")
  case "$sys" in
    lumen) curl -sf -X POST "$base/api/v1/admin/flush" >/dev/null ;;
    victoriametrics) curl -sf "$base/internal/force_flush" >/dev/null ;;
    prometheus) : ;;  # nothing to flush: every sample is in the WAL already
  esac
  local cpu1 rss1; cpu1=$(cpu_ticks "$pid"); rss1=$(hwm_kb "$pid")
  local disk1; disk1=$(du_b $measure)
  local extra="{}" cpu2 disk2
  case "$sys" in
    lumen)
      curl -sf -X POST "$base/api/v1/admin/compact" >/dev/null
      cpu2=$(cpu_ticks "$pid"); sleep 0.5; disk2=$(du_b $measure)
      extra=$(printf '{"compacted_disk_bytes_per_sample": %s, "compaction_cpu_us_per_sample": %s}' \
        "$(echo "$disk2 $samples" | awk '{printf "%.3f", $1/$2}')" \
        "$(echo "$cpu2 $cpu1 $hz $samples" | awk '{printf "%.3f", ($1-$2)/$3/$4*1e6}')") ;;
    victoriametrics)
      # Right after force_flush most of the data is still in memory (in-memory parts, 1.79): on disk only after
      # a merge or at shutdown. force_merge returns at once and merges in the background: wait until idle.
      local settled; sleep 5; settled=$(du_b $measure)
      curl -sf "$base/internal/force_merge" >/dev/null; sleep 1; wait_idle "$pid" 120
      cpu2=$(cpu_ticks "$pid"); disk2=$(du_b $measure)
      extra=$(printf '{"disk_bytes_per_sample_5s_after_flush": %s, "merged_disk_bytes_per_sample": %s, "merge_cpu_us_per_sample": %s}' \
        "$(echo "$settled $samples" | awk '{printf "%.3f", $1/$2}')" \
        "$(echo "$disk2 $samples" | awk '{printf "%.3f", $1/$2}')" \
        "$(echo "$cpu2 $cpu1 $hz $samples" | awk '{printf "%.3f", ($1-$2)/$3/$4*1e6}')") ;;
    prometheus)
      local wal chead snap snapdir
      wal=$(du_b "$data/wal"); chead=$(du_b "$data/chunks_head")
      snap=$(curl -sf -X POST "$base/api/v1/admin/tsdb/snapshot" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["name"])')
      cpu2=$(cpu_ticks "$pid")
      snapdir="$data/snapshots/$snap"
      extra=$(printf '{"wal_bytes_per_sample": %s, "chunks_head_bytes_per_sample": %s, "snapshot_block_bytes_per_sample": %s, "snapshot_cpu_us_per_sample": %s, "snapshot_blocks": %s}' \
        "$(echo "$wal $samples" | awk '{printf "%.3f", $1/$2}')" \
        "$(echo "$chead $samples" | awk '{printf "%.3f", $1/$2}')" \
        "$(echo "$(du_b "$snapdir") $samples" | awk '{printf "%.3f", $1/$2}')" \
        "$(echo "$cpu2 $cpu1 $hz $samples" | awk '{printf "%.3f", ($1-$2)/$3/$4*1e6}')" \
        "$(find "$snapdir" -mindepth 1 -maxdepth 1 -type d | wc -l)")
      rm -rf "$data/snapshots" ;;  # measured: keep it out of the at-rest figure
  esac
  kill -TERM "$pid"; wait "$pid" || true
  SERVER_PID=""
  # At rest: after a graceful shutdown (Prometheus: wal + chunks_head; the snapshot was measured and removed).
  local rest; rest=$(du_b $measure)
  # The histograms, on the same directory restarted, then the stored counts and the queries.
  # If the restart fails, the ingest figures are still printed: counts -1, queries failed (FINDING lines).
  local hresult="{}" stored=-1 hstored=-1 queries rss2=0
  if start_server "$sys" "$data" "$OUT/server-metrics-$sys-queries.log" queries; then
    pid=$SERVER_PID
    hresult=$(send_bodies "$sys" "$hwork" "$pid" "$OUT/send-histograms-$sys.err")
    case "$sys" in
      lumen) curl -sf -X POST "$base/api/v1/admin/flush" >/dev/null || true ;;
      victoriametrics) curl -sf "$base/internal/force_flush" >/dev/null || true ;;
      prometheus) : ;;
    esac
    read -r stored hstored < <(count_stored "$base" "$end")
    # The queries start once the server is idle (merges of what it just took done), for every system:
    # a query that uses both cores would otherwise share them with the background work.
    wait_idle "$pid" 60
    queries=$(run_queries "$base" "$start" "$end" "$sys")
    rss2=$(hwm_kb "$pid")
    kill -TERM "$pid"; wait "$pid" || true
    SERVER_PID=""
  else
    echo "warning: $sys did not restart on its data directory (see server-metrics-$sys-queries.log)" >&2
    queries=$(run_queries "$base" "$start" "$end" "$sys")
  fi
  python3 - "$sys" "$runno" "$samples" "$stored" "$disk1" "$cpu0" "$cpu1" "$hz" "$rss1" "${result:-"{}"}" "$extra" "$queries" "$rss2" "$rest" "$hsamples" "$hstored" "${hresult:-"{}"}" <<'PY' | tee -a "$RESULTS"
import json, sys
sysname, runno, samples, stored, disk1, cpu0, cpu1, hz, rss1, result, extra, queries, rss2, rest, hsamples, hstored, hresult = sys.argv[1:]
r = json.loads(result) if result.strip() else {}
h = json.loads(hresult) if hresult.strip() else {}
samples = int(samples)
row = {"system": sysname, "run": int(runno), "samples": samples, "stored": int(stored),
       "samples_per_s": r.get("lines_per_s"), "send_s": r.get("seconds"),
       "server_cpu_us_per_sample": r.get("server_cpu_us_per_line"),
       "server_cpu_us_per_sample_incl_flush": round((int(cpu1) - int(cpu0)) / int(hz) / samples * 1e6, 3),
       "peak_rss_mb": round(int(rss1) / 1024, 1),
       "disk_bytes_per_sample": round(int(disk1) / samples, 3),
       **json.loads(extra),
       "disk_bytes_per_sample_after_shutdown": round(int(rest) / samples, 3),
       "peak_rss_mb_incl_queries": round(int(rss2) / 1024, 1),
       "errors": r.get("errors", "send failed"),
       "hist_samples": int(hsamples), "hist_stored": int(hstored), "hist_send_s": h.get("seconds"),
       "hist_server_cpu_us_per_sample": h.get("server_cpu_us_per_line"), "hist_errors": h.get("errors", "send failed"),
       "queries": json.loads(queries)}
print(json.dumps(row))
PY
}

MARK=$(date +%s)
{ echo "# e2e_metrics $(date -u +%FT%TZ) runs=$RUNS systems=$SYSTEMS reps=$QREPS mark=$MARK"; } >&2
for r in $(seq "$RUNS"); do
  for s in $SYSTEMS; do
    run "$s" "$r" || echo "{\"system\": \"$s\", \"run\": $r, \"failed\": true}" | tee -a "$RESULTS"
  done
done

# Medians over this invocation's runs, and the series-count check across systems.
python3 - "$RESULTS" "$((RUNS * $(echo "$SYSTEMS" | wc -w)))" "${QUERIES[@]}" <<'PY'
import json, statistics, sys
path, n, *queries = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()][-int(n):]
rows = [r for r in rows if not r.get("failed")]
systems = list(dict.fromkeys(r["system"] for r in rows))
def med(s, k):
    v = [r[k] for r in rows if r["system"] == s and r.get(k) is not None]
    return statistics.median(v) if v else None
def fmt(v):
    return "—" if v is None else (f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if isinstance(v, float) else str(v))
cols = ["server_cpu_us_per_sample", "server_cpu_us_per_sample_incl_flush", "samples_per_s", "peak_rss_mb",
        "disk_bytes_per_sample", "disk_bytes_per_sample_5s_after_flush", "compacted_disk_bytes_per_sample",
        "merged_disk_bytes_per_sample", "disk_bytes_per_sample_after_shutdown",
        "wal_bytes_per_sample", "snapshot_block_bytes_per_sample", "stored", "hist_stored"]
cols = [c for c in cols if any(c in r for r in rows)]
print("\n| system | runs | " + " | ".join(cols) + " |")
print("|---|---|" + "---|" * len(cols))
for s in systems:
    print(f"| {s} | {sum(r['system'] == s for r in rows)} | " + " | ".join(fmt(med(s, c)) for c in cols) + " |")
names = [q["query"] for q in rows[0]["queries"]] if rows else []
print("\n| query | " + " | ".join(f"{s} median / min ms (series, points)" for s in systems) + " |")
print("|---|" + "---|" * len(systems))
problems = []
for i, name in enumerate(names):
    cells, counts = [], {}
    for s in systems:
        qs = [r["queries"][i] for r in rows if r["system"] == s]
        md = statistics.median(q["median_ms"] for q in qs); mn = min(q["min_ms"] for q in qs)
        series = sorted({q["series"] for q in qs}, key=str); points = sorted({q["points"] for q in qs}, key=str)
        counts[s] = series
        bad = [q["status"] for q in qs if q["status"] != "success"]
        cells.append(f"{md:.1f} / {mn:.1f} ({'/'.join(map(str, series))}, {'/'.join(map(str, points))})" + (f" {bad[0]}" if bad else ""))
        if not series or series == [None] or series == [0]:
            problems.append(f"{name}: {s} returned no series")
    if len({str(v) for v in counts.values()}) > 1:
        problems.append(f"{name}: series counts differ: {counts}")
    print(f"| {name} | " + " | ".join(cells) + " |")
for i, q in enumerate(queries):
    print(f"  {names[i] if i < len(names) else i}: {q}")
for s in systems:
    st = {r["stored"] for r in rows if r["system"] == s}
    if st != {r["samples"] for r in rows if r["system"] == s}:
        problems.append(f"{s}: samples counted back {sorted(st)} != sent")
    st = {r.get("hist_stored") for r in rows if r["system"] == s}
    if st != {r.get("hist_samples") for r in rows if r["system"] == s}:
        problems.append(f"{s}: histogram samples counted back {sorted(st, key=str)} != sent")
    he = sorted({str(r.get("hist_errors")) for r in rows if r["system"] == s})
    if he != ["0"]:
        problems.append(f"{s}: histogram send errors {he}")
print("\n" + ("\n".join("FINDING: " + p for p in problems) if problems else "series counts agree across systems"))
PY
