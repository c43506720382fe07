#!/usr/bin/env bash
# The empty server's memory right after start (issue 23: "RSS right after start, empty"), for one or more
# lumen binaries, interleaved so that each sees the same machine: each run starts `BIN server` on a fresh
# data directory on 127.0.0.1, waits for /ready, waits 0.5 s more, and reads VmRSS, RssAnon and RssFile
# from /proc/PID/status; then SIGTERM. Prints one JSON line per binary with the medians (MB) over the runs.
#
# Usage: benches/start_rss.sh [--runs N] [BIN ...]   (default: target/release/lumen, 5 runs)
# Needs: python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=5
if [ "${1:-}" = --runs ]; then RUNS=$2; shift 2; fi
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || BINS=(target/release/lumen)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for run in $(seq "$RUNS"); do
  for i in "${!BINS[@]}"; do
    data="$OUT/data-$run-$i"; port=$(free_port)
    "${BINS[$i]}" server --data-dir "$data" --http-addr "127.0.0.1:$port" --mqtt-listen off \
      --otlp-grpc-addr 127.0.0.1:0 >"$OUT/log-$run-$i" 2>&1 &
    pid=$!
    for _ in $(seq 400); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.05; done
    sleep 0.5
    awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s %s\n", $1, $2}' "/proc/$pid/status" | sed "s/^/$i /" >>"$OUT/rss"
    kill -TERM "$pid"; wait "$pid" || true
  done
done
python3 - "$OUT/rss" "${BINS[@]}" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for i, b in enumerate(sys.argv[2:]):
    out = {"bin": b}
    for key in ("VmRSS:", "RssAnon:", "RssFile:"):
        vals = [int(v) for j, k, v in rows if int(j) == i and k == key]
        out[key.rstrip(":").lower() + "_mb"] = round(statistics.median(vals) / 1024, 1)
    out["runs"] = len([r for r in rows if int(r[0]) == i and r[1] == "VmRSS:"])
    print(json.dumps(out))
PY
