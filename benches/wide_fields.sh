#!/usr/bin/env bash
# Many distinct field names (issue 17): 150 Loki push entries, each with 1,000 structured-metadata fields of
# its own (150,000 distinct names, ~3 MB of JSON in 15 requests), into a fresh release server; then one
# flush. Prints the flush time, the parts written, and the server's RSS after ingest, after the flush,
# after a SQL query that filters on one field, and after one that reads every part.
#
# Usage: benches/wide_fields.sh       Needs: a release build, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/lumen
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
OUT=benches/out
mkdir -p "$OUT"
data="$OUT/data-wide"
rm -rf "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
grpc=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" server --data-dir "$data" --http-addr "127.0.0.1:$port" --otlp-grpc-addr "127.0.0.1:$grpc" --mqtt-listen off \
  >"$OUT/server-wide.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
python3 - "$pid" "$port" <<'PY'
import json, sys, time, urllib.request
pid, port = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
def rss():
    d = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if l.startswith(("VmRSS", "VmHWM")))
    return {k: round(int(v.split()[0]) / 1024) for k, v in d.items()}
now = time.time_ns()
for batch in range(15):
    values = []
    for e in range(10):
        i = batch * 10 + e
        values.append([str(now + i), f"line {i}", {f"f{i}_{k}": "v" for k in range(1000)}])
    body = json.dumps({"streams": [{"stream": {"app": "wide"}, "values": values}]}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{base}/loki/api/v1/push", body, {"Content-Type": "application/json"}))
out = {"after_ingest_mb": rss()}
t = time.time()
r = json.loads(urllib.request.urlopen(urllib.request.Request(f"{base}/api/v1/admin/flush", b"", method="POST")).read())
out.update(flush_s=round(time.time() - t, 2), parts=r["parts"], after_flush_mb=rss())
t = time.time()
urllib.request.urlopen(f"{base}/api/v1/sql", b"SELECT count(*) FROM logs WHERE \"f149_999\" = 'v'").read()
out.update(sql_s=round(time.time() - t, 2), after_sql_mb=rss())
t = time.time()
urllib.request.urlopen(f"{base}/api/v1/sql", b"SELECT count(*) FROM logs").read()
out.update(sql_all_parts_s=round(time.time() - t, 2), after_sql_all_parts_mb=rss())
print(json.dumps(out))
PY
