#!/usr/bin/env bash
# LogQL query benchmark over the 2,000,000-line workload of benches/e2e_logs.sh (run that first: it
# leaves the compacted store in benches/out/data-loki). Starts a release `lumen server` on a copy of
# that store and runs the four queries of the LogQL issue through /loki/api/v1/query (q1-q3, instant at
# the end of the data, [1d]) and /loki/api/v1/query_range (q4, limit 100, backward): one warm-up, then
# five timed runs each. Prints per query: the median wall time seen by the client (Python's urllib adds
# about 0.3 ms), the median time inside the engine (the answer's stats.summary.execTime, without HTTP),
# the median server CPU time (utime+stime of the process, in 10 ms ticks), and the answer's size
# (matches, series or lines).
#
# Usage: benches/logql_queries.sh [--data DIR] [--runs N]
# Needs: a release build (cargo build --release), python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=benches/out/data-loki
RUNS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --data) SRC=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=target/release/lumen
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -f "$SRC/manifest.json" ] || { echo "no store in $SRC: run benches/e2e_logs.sh first" >&2; exit 1; }
DATA=benches/out/query-data
rm -rf "$DATA"
cp -r "$SRC" "$DATA"
rm -f "$DATA/lock"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# A long retention: the workload's day may be in the past.
"$BIN" server --data-dir "$DATA" --http-addr "127.0.0.1:$PORT" --mqtt-listen off --retention 36500d \
  >benches/out/server-query.log 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done

python3 - "$PORT" "$PID" "$RUNS" <<'PY'
import json, os, statistics, sys, time, urllib.parse, urllib.request

port, pid, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = f"http://127.0.0.1:{port}"
hz = os.sysconf("SC_CLK_TCK")

def cpu():
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / hz

def sql(q):
    req = urllib.request.Request(base + "/api/v1/sql", data=q.encode(), method="POST")
    return json.load(urllib.request.urlopen(req))["rows"]

row = sql("SELECT CAST(min(time) AS BIGINT) AS lo, CAST(max(time) AS BIGINT) AS hi, count(*) AS n FROM logs")[0]
lo, hi, total = int(row["lo"]), int(row["hi"]), int(row["n"])
pod = sql("SELECT pod, count(*) AS n FROM logs GROUP BY pod ORDER BY n DESC LIMIT 1")[0]["pod"]
at = hi + 1_000_000_000

queries = [
    ("q1 a word over all data", "/loki/api/v1/query",
     {"query": 'sum(count_over_time({app=~".+"} |= "error" [1d]))', "time": str(at)}),
    ("q2 a stream plus a word", "/loki/api/v1/query",
     {"query": 'sum(count_over_time({app="hdfs"} |= "Receiving" [1d]))', "time": str(at)}),
    ("q3 count by app", "/loki/api/v1/query",
     {"query": 'sum by (app) (count_over_time({app=~".+"} [1d]))', "time": str(at)}),
    ("q4 last 100 lines of one pod", "/loki/api/v1/query_range",
     {"query": '{pod="%s"}' % pod, "limit": "100", "direction": "backward",
      "start": str(lo), "end": str(at)}),
]

def size(answer):
    data = answer["data"]
    if data["resultType"] == "streams":
        return sum(len(s["values"]) for s in data["result"])
    if len(data["result"]) == 1:
        return float(data["result"][0]["value"][1])
    return len(data["result"])

results = []
for name, path, params in queries:
    url = base + path + "?" + urllib.parse.urlencode(params)
    answer = json.load(urllib.request.urlopen(url))  # warm-up
    walls, cpus, execs = [], [], []
    for _ in range(runs):
        c0, t0 = cpu(), time.perf_counter()
        answer = json.load(urllib.request.urlopen(url))
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((cpu() - c0) * 1000)
        execs.append(answer["data"]["stats"]["summary"]["execTime"] * 1000)
    results.append({"query": name, "median_wall_ms": round(statistics.median(walls), 2),
                    "median_engine_ms": round(statistics.median(execs), 2),
                    "median_server_cpu_ms": round(statistics.median(cpus), 1),
                    "min_wall_ms": round(min(walls), 2), "answer": size(answer)})
print(json.dumps({"lines": total, "pod": pod, "runs": runs, "results": results}, indent=1))
PY
