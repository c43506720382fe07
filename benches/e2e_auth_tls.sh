#!/usr/bin/env bash
# The cost of authentication and TLS on log ingest: the shared workload of ../shared/bench/gen_logs.py
# (2,000,000 lines over 200 streams) sent as Loki push JSON with ../shared/bench/send.py three times into a
# fresh release `lumen server` each: without auth, with a bearer token (server.auth_file), and with the token
# over HTTPS (server.tls_cert_file, an ECDSA P-256 certificate from openssl). send.py speaks plain HTTP, so for
# the TLS run it is started with http.client.HTTPConnection swapped for HTTPSConnection (same requests).
# Prints per run: server CPU µs per line (from /proc, as send.py measures it), lines per second, peak RSS,
# and the ratios against the run without auth.
#
# Usage: benches/e2e_auth_tls.sh [--lines N] [--streams N] [--concurrency N]
# Needs: a release build (cargo build --release), python3, openssl.
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
BIN=target/release/lumen
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
OUT=benches/out
mkdir -p "$OUT"
WORK="$OUT/work-loki-$LINES-$STREAMS"
if [ ! -f "$WORK/meta.json" ]; then
  rm -rf "$WORK"
  python3 "$SHARED/gen_logs.py" --lines "$LINES" --streams "$STREAMS" --format loki --out "$WORK" >&2
fi

PKI="$OUT/pki"
rm -rf "$PKI"; mkdir -p "$PKI"
(
  cd "$PKI"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj "/CN=bench" 2>/dev/null
  echo "subjectAltName=IP:127.0.0.1" > ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile ext 2>/dev/null
)
TOKENS="$PKI/tokens.toml"
TOKEN=$("$BIN" auth token --file "$TOKENS" --tenant default --scopes write,read 2>/dev/null)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # name: plain | auth | auth_tls
  local name=$1 scheme=http extra=() headers=()
  case "$name" in
    auth) extra=(--auth-file "$TOKENS"); headers=(--header "Authorization: Bearer $TOKEN") ;;
    auth_tls) extra=(--auth-file "$TOKENS" --tls-cert-file "$PKI/server.pem" --tls-key-file "$PKI/server.key")
      headers=(--header "Authorization: Bearer $TOKEN"); scheme=https ;;
  esac
  local data="$OUT/data-auth-$name"
  rm -rf "$data"
  local port; port=$(free_port)
  "$BIN" server --data-dir "$data" --http-addr "127.0.0.1:$port" --otlp-grpc-addr "127.0.0.1:$(free_port)" \
    --mqtt-listen off "${extra[@]}" >"$OUT/server-auth-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sfk "$scheme://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  local result
  result=$(python3 - "$PKI/ca.pem" "$SHARED/send.py" --url "$scheme://127.0.0.1:$port/loki/api/v1/push" --dir "$WORK" \
    --content-type application/json --concurrency "$CONC" --pid "$pid" "${headers[@]}" <<'PY'
import http.client, runpy, ssl, sys
ca, script = sys.argv[1], sys.argv[2]
if "https://" in " ".join(sys.argv):
    ctx = ssl.create_default_context(cafile=ca)
    plain = http.client.HTTPSConnection
    http.client.HTTPConnection = lambda host, port=None, timeout=None: plain(host, port, timeout=timeout, context=ctx)
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
PY
)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  python3 - "$name" "$LINES" "$rss" "$result" <<'PY'
import json, sys
name, lines, rss, result = sys.argv[1:]
r = json.loads(result.strip().splitlines()[-1])
print(json.dumps({"run": name, "lines": int(lines), "lines_per_s": r["lines_per_s"],
                  "server_cpu_us_per_line": r["server_cpu_us_per_line"], "errors": r.get("errors"), "peak_rss_mb": round(int(rss) / 1024, 1)}))
PY
}

RESULTS=()
for name in plain auth auth_tls; do
  line=$(run "$name")
  echo "$line"
  RESULTS+=("$line")
done
python3 - "${RESULTS[@]}" <<'PY'
import json, sys
runs = {r["run"]: r for r in map(json.loads, sys.argv[1:])}
base = runs["plain"]["server_cpu_us_per_line"]
for name in ("auth", "auth_tls"):
    print(json.dumps({"ratio": f"{name}/plain", "server_cpu": round(runs[name]["server_cpu_us_per_line"] / base, 3)}))
PY
