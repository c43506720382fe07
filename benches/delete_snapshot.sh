#!/usr/bin/env bash
# Deletes and snapshots over the standard log store (issue 18): a release `lumen server` takes the shared
# workload (../shared/bench/gen_logs.py, 2,000,000 Loki push lines over 200 streams), flushes and compacts;
# then, with the server idle:
#   - a snapshot (POST /api/v1/admin/snapshot): wall time, server CPU, bytes linked and copied;
#   - `lumen backup` of it to another directory (the copy): wall time;
#   - a Loki delete of one app's lines holding a word ({app="apache"} |= "error"): time until the request
#     is acknowledged and a query no longer sees the lines ("hide"), time until the parts are rewritten
#     ("purge", with store.delete_cancel_period = 8s and maintenance every 2 s), the server CPU the purge
#     took, and what the pending request costs two queries while it waits (median of 5, before and during).
# No peer runs beside it: Loki and VictoriaLogs (the log stores with a delete API) are not installable
# here, so these figures stand alone (benches/RESULTS.md).
#
# Usage: benches/delete_snapshot.sh [--lines N]     Needs: a release build, python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=2000000
STREAMS=200
while [ $# -gt 0 ]; do
  case "$1" in
    --lines) LINES=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
SHARED=../shared/bench
BIN=target/release/lumen
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
OUT=benches/out
mkdir -p "$OUT"
work="$OUT/work-loki-$LINES-$STREAMS"
if [ ! -f "$work/meta.json" ]; then
  rm -rf "$work"
  python3 "$SHARED/gen_logs.py" --lines "$LINES" --streams "$STREAMS" --format loki --out "$work" >&2
fi
data="$OUT/data-delete"
copy="$OUT/backup-delete"
rm -rf "$data" "$copy"
mkdir -p "$data"
cat >"$OUT/delete.toml" <<'EOF'
[store]
delete_cancel_period = "8s"
maintenance_interval = "2s"
EOF
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
grpc=$(free_port)
"$BIN" server --config "$OUT/delete.toml" --data-dir "$data" --http-addr "127.0.0.1:$port" \
  --otlp-grpc-addr "127.0.0.1:$grpc" --mqtt-listen off >"$OUT/server-delete.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
base="http://127.0.0.1:$port"
python3 "$SHARED/send.py" --url "$base/loki/api/v1/push" --dir "$work" --concurrency 4 >/dev/null
curl -sf -X POST "$base/api/v1/admin/compact" >/dev/null
python3 - "$pid" "$base" "$BIN" "$copy" <<'PY'
import json, os, subprocess, sys, time, urllib.parse, urllib.request
pid, base, binary, copy = sys.argv[1:5]
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick
def call(method, path, params=None):
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(urllib.request.Request(url, b"" if method != "GET" else None, method=method)) as r:
        body = r.read()
        return r.status, (json.loads(body) if body else None)
def count(query):
    _, r = call("GET", "/loki/api/v1/query", {"query": f"sum(count_over_time({query}[7d]))", "time": str(time.time())})
    res = r["data"]["result"]
    return int(float(res[0]["value"][1])) if res else 0
out = {}
_, stats = call("POST", "/api/v1/admin/flush")
out["parts"] = stats["parts"]
out["disk_mb"] = round(stats["disk_bytes"] / 2**20, 1)
# Snapshot.
c0, t0 = cpu(), time.time()
_, snap = call("POST", "/api/v1/admin/snapshot")
out["snapshot_s"] = round(time.time() - t0, 3)
out["snapshot_cpu_s"] = round(cpu() - c0, 3)
out["snapshot_linked_mb"] = round(snap["data"]["linked_bytes"] / 2**20, 1)
out["snapshot_copied_kb"] = round(snap["data"]["copied_bytes"] / 2**10, 1)
call("DELETE", "/api/v1/admin/snapshot/" + snap["data"]["name"])
t0 = time.time()
subprocess.run([binary, "backup", "--server", base, "--to", copy], check=True, capture_output=True)
out["backup_copy_s"] = round(time.time() - t0, 2)
# Delete.
target = '{app="apache"} |= "error"'
before = count(target)
total = count('{app=~".+"}')
def timed0(fn):
    runs = []
    for _ in range(5):
        t = time.time(); fn(); runs.append((time.time() - t) * 1000)
    return round(sorted(runs)[2], 1)
out["count_all_ms"] = timed0(lambda: count('{app=~".+"}'))
out["lines_ms"] = timed0(lambda: call("GET", "/loki/api/v1/query_range", {"query": '{app="apache"} |= "notice"', "limit": "1000", "start": str(int((time.time() - 7 * 86400) * 1e9))}))
c0, t0 = cpu(), time.time()
status, _ = call("POST", "/loki/api/v1/delete", {"query": target, "start": "0"})
assert status == 204
out["delete_ack_ms"] = round((time.time() - t0) * 1000, 1)
hidden = count(target)
out["hide_ms"] = round((time.time() - t0) * 1000, 1)
assert hidden == 0, hidden
# What the pending request costs the reads (it is applied to every row they read), while it waits for
# its cancel period: the same queries as before the request, 5 times each, median wall ms.
def timed(fn):
    runs = []
    for _ in range(5):
        t = time.time(); fn(); runs.append((time.time() - t) * 1000)
    return round(sorted(runs)[2], 1)
q_lines = lambda: call("GET", "/loki/api/v1/query_range", {"query": '{app="apache"} |= "notice"', "limit": "1000", "start": str(int((time.time() - 7 * 86400) * 1e9))})
out["pending_count_all_ms"] = timed(lambda: count('{app=~".+"}'))
out["pending_lines_ms"] = timed(q_lines)
c0 = cpu()  # the purge's CPU from here: the queries above are not its
while True:
    _, reqs = call("GET", "/loki/api/v1/delete")
    if reqs and reqs[0]["status"] == "processed":
        break
    time.sleep(0.05)
out["purge_s"] = round(time.time() - t0, 2)
out["purge_cpu_s"] = round(cpu() - c0, 2)
after_total = count('{app=~".+"}')
assert after_total == total - before, (after_total, total, before)
out["lines_deleted"] = before
out["lines_total"] = total
log = open(os.path.join(os.path.dirname(copy), "server-delete.log")).read()
rew = [json.loads(l) if l.startswith("{") else l for l in log.splitlines() if "delete processed" in l]
out["purge_log"] = rew[-1][-200:] if rew and isinstance(rew[-1], str) else rew[-1] if rew else None
print(json.dumps(out))
PY
