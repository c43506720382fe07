#!/usr/bin/env bash
# End-to-end agent benchmark: the shared workload of ../shared/bench/gen_logs.py (2,000,000 lines over 200
# streams) written as CRI log files across 200 pod directories, the way the kubelet lays them out; a release
# `lumen server` and a release `lumen agent` started on them; timed until the server holds every line.
# Prints: lines per second end to end, agent CPU µs per line, agent peak RSS, server CPU µs per line.
#
# With VECTOR_BIN set (a Vector binary with the file source, remap and the loki sink), Vector is the peer in
# the same run: it tails the same files (file source from the beginning), parses CRI and the pod path with
# remap (time, stream; namespace, pod, container labels) and ships through its loki sink (protobuf+snappy)
# into a second fresh Lumen server, timed the same way until that server holds every line. Printed: Vector's
# CPU µs per line and peak RSS, and the agent's ratios to them. Vector is not in any package registry; it is
# not built by this repository.
#
# With --peer, the same files are also tailed by Debian's rsyslog (imfile, forwarding every line over TCP
# to a sink that discards it) as a reference for the cost of tailing and shipping in a mature C shipper:
# rsyslog CPU µs per line, measured the same way.
#
# Usage: [VECTOR_BIN=/path/to/vector] [LUMEN_BIN=target/release/lumen] benches/e2e_agent.sh [--lines N] [--streams N] [--peer]
# Needs: a release build (cargo build --release), python3; rsyslog for --peer (apt-get install rsyslog).
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=2000000
STREAMS=200
PEER=0
while [ $# -gt 0 ]; do
  case "$1" in
    --lines) LINES=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --peer) PEER=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
SHARED=../shared/bench
BIN=${LUMEN_BIN:-target/release/lumen}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
OUT=benches/out
mkdir -p "$OUT"
HZ=$(getconf CLK_TCK)

work="$OUT/work-jsonline-$LINES-$STREAMS"
if [ ! -f "$work/meta.json" ]; then
  rm -rf "$work"
  python3 "$SHARED/gen_logs.py" --lines "$LINES" --streams "$STREAMS" --format jsonline --out "$work" >&2
fi
pods="$OUT/pods-$LINES-$STREAMS"
if [ ! -f "$pods/.done" ]; then
  rm -rf "$pods"
  python3 - "$work" "$pods" <<'PY'
import json, os, sys, hashlib
work, pods = sys.argv[1], sys.argv[2]
files = {}
for name in sorted(os.listdir(work)):
    if name == "meta.json":
        continue
    with open(os.path.join(work, name), encoding="utf-8") as f:
        for line in f:
            o = json.loads(line)
            key = (o["namespace"], o["pod"], o["container"])
            fh = files.get(key)
            if fh is None:
                uid = hashlib.sha1("/".join(key).encode()).hexdigest()[:32]
                d = os.path.join(pods, f"{key[0]}_{key[1]}_{uid}", key[2])
                os.makedirs(d, exist_ok=True)
                fh = files[key] = open(os.path.join(d, "0.log"), "w", encoding="utf-8")
            fh.write(f'{o["_time"]} stdout F {o["_msg"]}\n')
for fh in files.values():
    fh.close()
open(os.path.join(pods, ".done"), "w").close()
print(f"{len(files)} container logs under {pods}", file=sys.stderr)
PY
fi
bytes=$(du -sb "$pods" | awk '{print $1}')

# Every process this script starts is stopped when it exits, however it exits.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
# A child that exited is a zombie until waited for, and kill -0 still finds it.
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }
# Waits until the server on port $1 holds every line, as long as the shipper $2 lives (its log: $3).
wait_stored() {
  while [ "$(count "$1")" -lt "$LINES" ]; do
    alive "$2" || { echo "the shipper died; see $3" >&2; exit 1; }
    sleep 1
  done
}
count() {
  curl -sf -X POST "http://127.0.0.1:$1/api/v1/sql" -d 'SELECT count(*) AS n FROM logs' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["rows"][0]["n"])' 2>/dev/null || echo 0
}

data="$OUT/data-agent"
agent_data="$OUT/agent-state"
rm -rf "$data" "$agent_data"
sport=$(free_port)
aport=$(free_port)
"$BIN" server --data-dir "$data" --http-addr "127.0.0.1:$sport" --mqtt-listen off --otlp-grpc-addr 127.0.0.1:0 >"$OUT/server-agent.log" 2>&1 &
spid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$sport/ready" >/dev/null && break; sleep 0.1; done
cat >"$OUT/agent.toml" <<EOF
[agent]
kubernetes_api = "off"
node_metrics = false
EOF
scpu0=$(cpu "$spid")
t0=$(date +%s.%N)
"$BIN" agent --config "$OUT/agent.toml" --server "http://127.0.0.1:$sport" --pods-dir "$pods" \
  --data-dir "$agent_data" --node-name bench --http-addr "127.0.0.1:$aport" >"$OUT/agent.log" 2>&1 &
apid=$!
wait_stored "$sport" "$apid" "$OUT/agent.log"
t1=$(date +%s.%N)
acpu=$(cpu "$apid")
scpu1=$(cpu "$spid")
arss=$(awk '/VmHWM/ {print $2}' "/proc/$apid/status")
srss=$(awk '/VmHWM/ {print $2}' "/proc/$spid/status")
stored=$(count "$sport")
sent=$(curl -sf "http://127.0.0.1:$aport/metrics" | awk '/^lumen_agent_sent_bytes_total\{kind="logs"\}/ {print $2}')
sent=${sent:-0}
kill -TERM "$apid"; wait "$apid" || true
kill -TERM "$spid"; wait "$spid" || true

peer='None'
if [ "$PEER" = 1 ]; then
  command -v rsyslogd >/dev/null || { echo "--peer needs rsyslog (apt-get install rsyslog)" >&2; exit 1; }
  rs="$OUT/rsyslog"
  rm -rf "$rs"; mkdir -p "$rs/work"
  sink_port=$(free_port)
  # A TCP sink that counts newline-terminated lines and discards them.
  python3 - "$sink_port" "$rs/received" <<'PY' &
import socket, sys, threading
port, out = int(sys.argv[1]), sys.argv[2]
total = 0
lock = threading.Lock()
def serve(c):
    global total
    buf = b""
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        n = d.count(b"\n")
        with lock:
            total += n
            open(out, "w").write(str(total))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", port)); s.listen()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
  sinkpid=$!
  sleep 0.5
  cat >"$rs/rsyslog.conf" <<EOF
global(workDirectory="$(realpath "$rs/work")")
module(load="imfile" mode="inotify")
input(type="imfile" file="$(realpath "$pods")/*/*/*.log" tag="k8s" ruleset="ship")
ruleset(name="ship") { action(type="omfwd" target="127.0.0.1" port="$sink_port" protocol="tcp" template="RSYSLOG_FileFormat") }
EOF
  t2=$(date +%s.%N)
  rsyslogd -n -f "$(realpath "$rs/rsyslog.conf")" -i "$(realpath "$rs")/rsyslog.pid" >"$rs/rsyslog.log" 2>&1 &
  rpid=$!
  while :; do
    got=$(cat "$rs/received" 2>/dev/null || true)
    got=${got:-0}
    [ "$got" -ge "$LINES" ] && break
    alive "$rpid" || { echo "rsyslog died; see $rs/rsyslog.log" >&2; exit 1; }
    sleep 1
  done
  t3=$(date +%s.%N)
  rcpu=$(cpu "$rpid")
  rrss=$(awk '/VmHWM/ {print $2}' "/proc/$rpid/status")
  kill -TERM "$rpid"; wait "$rpid" || true
  kill "$sinkpid" 2>/dev/null || true
  peer=$(python3 -c "import json; print(json.dumps({'peer': 'rsyslog imfile+omfwd', 'lines_per_s': round($LINES/($t3-$t2)), 'cpu_us_per_line': round($rcpu/$HZ/$LINES*1e6, 3), 'peak_rss_mb': round($rrss/1024, 1)}))")
fi

vector='None'
if [ -n "${VECTOR_BIN:-}" ]; then
  vd="$OUT/vector"
  rm -rf "$vd" "$OUT/data-vector"; mkdir -p "$vd/data"
  vsport=$(free_port)
  "$BIN" server --data-dir "$OUT/data-vector" --http-addr "127.0.0.1:$vsport" --mqtt-listen off --otlp-grpc-addr 127.0.0.1:0 >"$OUT/server-vector.log" 2>&1 &
  vspid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$vsport/ready" >/dev/null && break; sleep 0.1; done
  # The same work as the agent's: CRI time and stream, namespace/pod/container labels from the path, the
  # node label, stream and pod_uid as fields (structured metadata).
  cat >"$vd/vector.yaml" <<EOF
data_dir: $(realpath "$vd/data")
sources:
  pods:
    type: file
    include: ["$(realpath "$pods")/*/*/*.log"]
    read_from: beginning
    fingerprint:
      strategy: device_and_inode
transforms:
  cri:
    type: remap
    inputs: [pods]
    source: |
      cri = parse_regex!(.message, r'^(?P<time>\S+) (?P<stream>stdout|stderr) (?P<tag>[PF]) (?P<msg>.*)\$')
      .timestamp = parse_timestamp!(cri.time, "%+")
      .stream = cri.stream
      .message = cri.msg
      path = parse_regex!(.file, r'/(?P<namespace>[^/_]+)_(?P<pod>[^/_]+)_(?P<uid>[^/]+)/(?P<container>[^/]+)/[^/]+\$')
      .namespace = path.namespace
      .pod = path.pod
      .container = path.container
      .pod_uid = path.uid
sinks:
  lumen:
    type: loki
    inputs: [cri]
    endpoint: http://127.0.0.1:$vsport
    encoding:
      codec: text
    labels:
      namespace: "{{ namespace }}"
      pod: "{{ pod }}"
      container: "{{ container }}"
      node: bench
    structured_metadata:
      stream: "{{ stream }}"
      pod_uid: "{{ pod_uid }}"
    batch:
      max_bytes: 1048576
    # Vector 0.58 refuses label templates without a literal prefix unless the sink opts out.
    dangerously_allow_unconfined_template_resolution: true
EOF
  vversion=$("$VECTOR_BIN" --version | awk '{print $2}')
  vscpu0=$(cpu "$vspid")
  t4=$(date +%s.%N)
  VECTOR_LOG=warn "$VECTOR_BIN" --config "$vd/vector.yaml" >"$vd/vector.log" 2>&1 &
  vpid=$!
  wait_stored "$vsport" "$vpid" "$vd/vector.log"
  t5=$(date +%s.%N)
  vcpu=$(cpu "$vpid")
  vscpu1=$(cpu "$vspid")
  vrss=$(awk '/VmHWM/ {print $2}' "/proc/$vpid/status")
  vstored=$(count "$vsport")
  kill -TERM "$vpid"; wait "$vpid" || true
  kill -TERM "$vspid"; wait "$vspid" || true
  vector=$(python3 -c "import json; print(json.dumps({'peer': 'Vector $vversion file+remap+loki', 'stored': $vstored, 'lines_per_s': round($LINES/($t5-$t4)), 'cpu_us_per_line': round($vcpu/$HZ/$LINES*1e6, 3), 'peak_rss_mb': round($vrss/1024, 1), 'server_cpu_us_per_line': round(($vscpu1-$vscpu0)/$HZ/$LINES*1e6, 3)}))")
fi

python3 - <<PY
import json
lines, hz = $LINES, $HZ
wall = $t1 - $t0
out = {
    "lines": lines, "stored": $stored, "streams": $STREAMS, "file_bytes": $bytes,
    "lines_per_s_end_to_end": round(lines / wall),
    "agent_cpu_us_per_line": round($acpu / hz / lines * 1e6, 3),
    "agent_peak_rss_mb": round($arss / 1024, 1),
    "agent_sent_bytes_per_line": round($sent / lines, 1),
    "server_cpu_us_per_line": round(($scpu1 - $scpu0) / hz / lines * 1e6, 3),
    "server_peak_rss_mb": round($srss / 1024, 1),
    "peer": $peer,
    "vector": $vector,
}
if out["vector"]:
    out["agent_cpu_ratio_to_vector"] = round(out["agent_cpu_us_per_line"] / out["vector"]["cpu_us_per_line"], 2)
    out["agent_rss_ratio_to_vector"] = round(out["agent_peak_rss_mb"] / out["vector"]["peak_rss_mb"], 2)
if out["peer"]:
    out["agent_cpu_ratio_to_peer"] = round(out["agent_cpu_us_per_line"] / out["peer"]["cpu_us_per_line"], 2)
print(json.dumps(out))
PY
