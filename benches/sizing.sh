#!/usr/bin/env bash
# Sizing at steady, modest rates (issue 18 §4: the README's sizing table). Each case runs a fresh release
# server on its defaults and feeds it in real time:
#   logs-1000   1,000 log lines/s (the shared Loghub workload, Loki push, 100 lines every 0.1 s, 200 streams)
#               for --seconds (default 150: past one head_max_age, so the head flushes by age once or more);
#   series-N    N series (4 labels each) scraped every 15 s, as remote import at the time of the scrape, for
#               --seconds; N = 10,000 and 100,000.
# Prints per case: server CPU per item, RSS at the end and its peak (VmHWM), and bytes on disk per item
# after a final flush (the store's parts and WAL; a fresh directory's empty files count too).
#
# Usage: benches/sizing.sh [--seconds S] [--cases "logs-1000 series-10000 series-100000"]
# Needs: a release build (cargo build --release), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_CASE=150
CASES="logs-1000 series-10000 series-100000"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_CASE=$2; shift 2 ;;
    --cases) CASES=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=target/release/lumen
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
OUT=benches/out
mkdir -p "$OUT"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for case in $CASES; do
  data="$OUT/data-sizing-$case"
  rm -rf "$data"
  port=$(free_port)
  grpc=$(free_port)
  bodies=""
  if [ "$case" = logs-1000 ]; then
    bodies="$OUT/sizing-bodies"
    rm -rf "$bodies"
    python3 ../shared/bench/gen_logs.py --lines $((SECONDS_PER_CASE * 1000)) --format loki --out "$bodies" \
      --streams 200 --batch 100 --rate 1000 --start-ns "$(date +%s%N)" >/dev/null
  fi
  "$BIN" server --data-dir "$data" --http-addr "127.0.0.1:$port" --otlp-grpc-addr "127.0.0.1:$grpc" \
    --mqtt-listen off >"$OUT/server-sizing-$case.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  python3 - "$case" "$pid" "$port" "$SECONDS_PER_CASE" "$data" "$bodies" <<'PY'
import json, os, sys, time, urllib.error, urllib.request
case, pid, port, seconds, data, bodies = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
base = f"http://127.0.0.1:{port}"
tick = os.sysconf("SC_CLK_TCK")

def status():
    d = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if l.startswith(("VmRSS", "VmHWM")))
    return {k: int(v.split()[0]) / 1024 for k, v in d.items()}

def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick

def post(path, body, ctype):
    req = urllib.request.Request(base + path, body, {"Content-Type": ctype})
    try:
        urllib.request.urlopen(req).read()
    except urllib.error.HTTPError as e:
        sys.exit(f"{path}: {e.code} {e.read().decode(errors='replace')[:300]}")

def disk():
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(data) for f in fs)

cpu0, start, items, rss = cpu(), time.time(), 0, []
if case.startswith("logs"):
    files = sorted(f for f in os.listdir(bodies) if f.endswith(".loki"))
    for i, name in enumerate(files):
        due = start + i * 0.1
        time.sleep(max(0.0, due - time.time()))
        post("/loki/api/v1/push", open(os.path.join(bodies, name), "rb").read(), "application/json")
        items += 100
        if i % 10 == 0:
            rss.append(status()["VmRSS"])
else:
    n = int(case.split("-")[1])
    scrapes = max(1, seconds // 15)
    for s in range(scrapes):
        due = start + s * 15
        time.sleep(max(0.0, due - time.time()))
        ts = int(time.time() * 1000)
        body = "".join(
            f'sizing_metric{{instance="node-{k % 50}:9100",job="node",device="d{k // 50}",mode="user"}} {k + s} {ts}\n'
            for k in range(n)
        ).encode()
        post("/api/v1/import/prometheus", body, "text/plain")
        items += n
        rss.append(status()["VmRSS"])
    time.sleep(max(0.0, start + seconds - time.time()))
    rss.append(status()["VmRSS"])
used = cpu() - cpu0
end = status()
urllib.request.urlopen(urllib.request.Request(base + "/api/v1/admin/flush", b"", method="POST")).read()
print(json.dumps({
    "case": case,
    "items": items,
    "seconds": round(time.time() - start),
    "server_cpu_us_per_item": round(used / items * 1e6, 2),
    "cpu_share_of_one_core": round(used / (time.time() - start), 4),
    "rss_end_mb": round(end["VmRSS"], 1),
    "rss_median_mb": round(sorted(rss)[len(rss) // 2], 1) if rss else None,
    "peak_rss_mb": round(status()["VmHWM"], 1),
    "disk_bytes_per_item_after_flush": round(disk() / items, 2),
}))
PY
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done
