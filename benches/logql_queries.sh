#!/usr/bin/env bash
# LogQL query benchmark over the 2,000,000-line workload of benches/e2e_logs.sh (run that first: it
# leaves the compacted store in benches/out/data-loki). Starts a release `lumen server` on a copy of
# that store and runs the four queries of the LogQL issue through /loki/api/v1/query (q1-q3, instant at
# the end of the data, [1d]) and /loki/api/v1/query_range (q4, limit 100, backward): one warm-up, then
# N timed runs each (default 5). Prints per query: the median wall time seen by the client (Python's
# urllib adds about 0.3 ms), the median time inside the engine (the answer's stats.summary.execTime,
# without HTTP), the median server CPU time (utime+stime of the process, in 10 ms ticks), and the
# answer's size (matches, series or lines).
#
# With VL_BIN set to a victoria-logs binary, VictoriaLogs runs beside it on a copy of the store that
# `VL_BIN=... benches/e2e_logs.sh` left in benches/out/data-vl-loki (the same Loki push bodies), and the
# same four questions go to /select/logsql/query in LogsQL:
#   q1 ~"error" | stats count() as n              (LogQL |= "error": both a case-sensitive substring)
#   q2 {app="hdfs"} Receiving | stats count() as n (a word in LogsQL, a substring in LogQL)
#   q3 * | stats by (app) count() as n
#   q4 {pod="P"} | sort by (_time desc) | limit 100 (P: the same pod as the LogQL q4)
# The timed runs alternate between the two servers (Lumen, VictoriaLogs, Lumen, ...), so the machine's
# noise falls on both; the wall time is measured the same way for both (VictoriaLogs has no engine time).
# The answers are compared (q1/q2 counts, q3 counts per app, q4 line count and timestamps) and a WARNING
# goes to stderr when they differ. Then Lumen / VictoriaLogs of the median wall and CPU per query.
# Without VL_BIN the peer is skipped with a message.
#
# Lumen's cache of scan answers (`store.scan_cache_max_bytes`) is off unless --scan-cache is given: with it,
# every timed run after the warm-up is answered from the cache (a dashboard's refresh over the same range),
# not by the engine; VictoriaLogs has no such cache. Its cache of decoded pages
# (`store.log_page_cache_max_bytes`, an engine cache any search over the same rows uses) is on at its
# default unless --no-page-cache is given. The warm-up's wall time is printed too (`first_wall_ms`): the
# first run after the server's start, with the operating system's file cache warm but Lumen's caches empty.
#
# Usage: [VL_BIN=/path/to/victoria-logs] [LUMEN_BIN=target/release/lumen] benches/logql_queries.sh [--data DIR] [--vl-data DIR] [--runs N]
#        [--scan-cache] [--no-page-cache]
# Needs: a release build (cargo build --release), python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=benches/out/data-loki
VL_SRC=benches/out/data-vl-loki
RUNS=5
SCAN_CACHE=0
PAGE_CACHE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --data) SRC=$2; shift 2 ;;
    --vl-data) VL_SRC=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --scan-cache) SCAN_CACHE=1; shift ;;
    --no-page-cache) PAGE_CACHE=0; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=${LUMEN_BIN:-target/release/lumen}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ -f "$SRC/manifest.json" ] || { echo "no store in $SRC: run benches/e2e_logs.sh first" >&2; exit 1; }
if [ -n "${VL_BIN:-}" ]; then
  [ -x "$VL_BIN" ] || { echo "VL_BIN=$VL_BIN is not an executable" >&2; exit 1; }
  [ -d "$VL_SRC" ] || { echo "no VictoriaLogs store in $VL_SRC: run VL_BIN=$VL_BIN benches/e2e_logs.sh first" >&2; exit 1; }
else
  echo "VL_BIN is not set: VictoriaLogs skipped (set it to a victoria-logs binary to compare)" >&2
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DATA=benches/out/query-data
rm -rf "$DATA"
cp -r "$SRC" "$DATA"
rm -f "$DATA/lock"
PORT=$(free_port)
# A long retention: the workload's day may be in the past.
CONFIG=benches/out/lumen-query.toml
printf '[store]\n' >"$CONFIG"
[ "$SCAN_CACHE" = 1 ] || printf 'scan_cache_max_bytes = 0\n' >>"$CONFIG"
[ "$PAGE_CACHE" = 1 ] || printf 'log_page_cache_max_bytes = 0\n' >>"$CONFIG"
"$BIN" server --config "$CONFIG" --data-dir "$DATA" --http-addr "127.0.0.1:$PORT" --mqtt-listen off --retention 36500d \
  >benches/out/server-query.log 2>&1 &
PID=$!
VL_PORT=0
VL_PID=0
trap 'kill -TERM $PID 2>/dev/null || true; [ "$VL_PID" = 0 ] || kill -TERM $VL_PID 2>/dev/null || true' EXIT
if [ -n "${VL_BIN:-}" ]; then
  VL_DATA=benches/out/query-data-vl
  rm -rf "$VL_DATA"
  cp -r "$VL_SRC" "$VL_DATA"
  rm -f "$VL_DATA/flock.lock"
  VL_PORT=$(free_port)
  "$VL_BIN" -storageDataPath="$VL_DATA" -httpListenAddr="127.0.0.1:$VL_PORT" -retentionPeriod=100y \
    >benches/out/server-query-vl.log 2>&1 &
  VL_PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$VL_PORT/health" >/dev/null && break; sleep 0.1; done
fi
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done

python3 - "$PORT" "$PID" "$RUNS" "$VL_PORT" "$VL_PID" <<'PY'
import datetime, json, os, statistics, sys, time, urllib.parse, urllib.request

port, pid, runs, vl_port, vl_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
base = f"http://127.0.0.1:{port}"
vl_base = f"http://127.0.0.1:{vl_port}" if vl_pid else None
hz = os.sysconf("SC_CLK_TCK")

def cpu(p):
    with open(f"/proc/{p}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / hz

def sql(q):
    req = urllib.request.Request(base + "/api/v1/sql", data=q.encode(), method="POST")
    return json.load(urllib.request.urlopen(req))["rows"]

row = sql("SELECT CAST(min(time) AS BIGINT) AS lo, CAST(max(time) AS BIGINT) AS hi, count(*) AS n FROM logs")[0]
lo, hi, total = int(row["lo"]), int(row["hi"]), int(row["n"])
pod = sql("SELECT pod, count(*) AS n FROM logs GROUP BY pod ORDER BY n DESC LIMIT 1")[0]["pod"]
at = hi + 1_000_000_000

# name, Lumen path and parameters, the LogsQL query
queries = [
    ("q1 a word over all data", "/loki/api/v1/query",
     {"query": 'sum(count_over_time({app=~".+"} |= "error" [1d]))', "time": str(at)},
     '~"error" | stats count() as n'),
    ("q2 a stream plus a word", "/loki/api/v1/query",
     {"query": 'sum(count_over_time({app="hdfs"} |= "Receiving" [1d]))', "time": str(at)},
     '{app="hdfs"} Receiving | stats count() as n'),
    ("q3 count by app", "/loki/api/v1/query",
     {"query": 'sum by (app) (count_over_time({app=~".+"} [1d]))', "time": str(at)},
     '* | stats by (app) count() as n'),
    ("q4 last 100 lines of one pod", "/loki/api/v1/query_range",
     {"query": '{pod="%s"}' % pod, "limit": "100", "direction": "backward",
      "start": str(lo), "end": str(at)},
     '{pod="%s"} | sort by (_time desc) | limit 100' % pod),
]

def size(answer):
    data = answer["data"]
    if data["resultType"] == "streams":
        return sum(len(s["values"]) for s in data["result"])
    if len(data["result"]) == 1:
        return float(data["result"][0]["value"][1])
    return len(data["result"])

def lumen_facts(answer):
    """What is compared with VictoriaLogs: a count, counts per app, or the lines' timestamps (ns)."""
    data = answer["data"]
    if data["resultType"] == "streams":
        return sorted((int(v[0]) for s in data["result"] for v in s["values"]), reverse=True)
    if len(data["result"]) == 1 and not data["result"][0]["metric"]:
        return int(float(data["result"][0]["value"][1]))
    return {r["metric"].get("app", ""): int(float(r["value"][1])) for r in data["result"]}

def rfc3339_ns(s):
    # 2026-12-05T00:03:19.9999Z -> ns since the epoch, exactly
    head, _, frac = s.rstrip("Z").partition(".")
    secs = int(datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.timezone.utc).timestamp())
    return secs * 1_000_000_000 + int((frac + "000000000")[:9])

def vl_facts(rows, logsql):
    if "_time desc" in logsql:
        return sorted((rfc3339_ns(r["_time"]) for r in rows), reverse=True)
    if "by (app)" in logsql:
        return {r.get("app", ""): int(r["n"]) for r in rows}
    return int(rows[0]["n"]) if rows else 0

def vl_query(url):
    with urllib.request.urlopen(url) as resp:
        return [json.loads(l) for l in resp.read().splitlines() if l.strip()]

def vl_size(facts):
    return len(facts) if isinstance(facts, (list, dict)) else facts

results, vl_results, agree = [], [], []
for name, path, params, logsql in queries:
    url = base + path + "?" + urllib.parse.urlencode(params)
    vl_url = vl_base + "/select/logsql/query?" + urllib.parse.urlencode({"query": logsql}) if vl_base else None
    t0 = time.perf_counter()
    answer = json.load(urllib.request.urlopen(url))  # warm-up
    first = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    vl_rows = vl_query(vl_url) if vl_url else None
    vl_first = (time.perf_counter() - t0) * 1000
    walls, cpus, execs = [], [], []
    vl_walls, vl_cpus = [], []
    for _ in range(runs):
        c0, t0 = cpu(pid), time.perf_counter()
        answer = json.load(urllib.request.urlopen(url))
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((cpu(pid) - c0) * 1000)
        execs.append(answer["data"]["stats"]["summary"]["execTime"] * 1000)
        if vl_url:
            c0, t0 = cpu(vl_pid), time.perf_counter()
            vl_rows = vl_query(vl_url)
            vl_walls.append((time.perf_counter() - t0) * 1000)
            vl_cpus.append((cpu(vl_pid) - c0) * 1000)
    results.append({"query": name, "median_wall_ms": round(statistics.median(walls), 2),
                    "median_engine_ms": round(statistics.median(execs), 2),
                    "median_server_cpu_ms": round(statistics.median(cpus), 1),
                    "min_wall_ms": round(min(walls), 2), "first_wall_ms": round(first, 2),
                    "answer": size(answer)})
    if vl_url:
        lf, vf = lumen_facts(answer), vl_facts(vl_rows, logsql)
        same = lf == vf
        agree.append(same)
        vl_results.append({"query": name, "logsql": logsql, "median_wall_ms": round(statistics.median(vl_walls), 2),
                           "median_server_cpu_ms": round(statistics.median(vl_cpus), 1),
                           "min_wall_ms": round(min(vl_walls), 2), "first_wall_ms": round(vl_first, 2),
                           "answer": vl_size(vf), "same_answer": same})
        if not same:
            detail = (f"Lumen {lf}, VictoriaLogs {vf}" if not isinstance(lf, list)
                      else f"Lumen {len(lf)} lines (newest {lf[:1]}), VictoriaLogs {len(vf)} lines (newest {vf[:1]})")
            print(f"WARNING: {name}: the answers differ: {detail}", file=sys.stderr)
out = {"lines": total, "pod": pod, "runs": runs, "results": results}
if vl_results:
    out["victorialogs"] = vl_results
    out["answers_agree"] = all(agree)
    out["lumen_over_victorialogs"] = [
        {"query": l["query"],
         "median_wall": round(l["median_wall_ms"] / v["median_wall_ms"], 3),
         "min_wall": round(l["min_wall_ms"] / v["min_wall_ms"], 3),
         "first_wall": round(l["first_wall_ms"] / v["first_wall_ms"], 3),
         "median_server_cpu": round(l["median_server_cpu_ms"] / v["median_server_cpu_ms"], 3)
         if v["median_server_cpu_ms"] else None}
        for l, v in zip(results, vl_results)]
print(json.dumps(out, indent=1))
PY
