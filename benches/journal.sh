#!/usr/bin/env bash
# CPU per journal entry: `lumen agent` reading a journal file natively (and mapping, batching, buffering
# and shipping its entries to a `lumen server`), beside `journalctl --file … -o export > /dev/null` over
# the same file (reading and printing only). Prints CPU µs per entry of each and the ratio.
#
#   benches/journal.sh [ENTRIES]      default 100000
#
# Uses $LUMEN, else target/release/lumen, else target/debug/lumen (a debug build is far slower: build
# with `cargo build --release` for numbers worth comparing). Needs /lib/systemd/systemd-journal-remote
# (package systemd-journal-remote) to write the journal, journalctl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-100000}
lumen=${LUMEN:-target/release/lumen}
[ -x "$lumen" ] || lumen=target/debug/lumen
"$lumen" agent --help 2>/dev/null | grep -q -- --journal-dir \
  || { echo "benches/journal.sh: $lumen predates the journal reader; rebuild it (or set LUMEN)" >&2; exit 1; }
remote=/lib/systemd/systemd-journal-remote
[ -x "$remote" ] || { echo "benches/journal.sh: $remote is missing (apt-get install systemd-journal-remote)" >&2; exit 1; }
[ -x "$lumen" ] || { echo "benches/journal.sh: no lumen binary; run cargo build --release" >&2; exit 1; }

tmp=$(mktemp -d)
server_pid=""
agent_pid=""
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null || true
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/journal" "$tmp/pods"

# Entries like a busy node's: a few units, priorities, pids; every 50th message long enough for zstd.
python3 - "$n" > "$tmp/in.export" <<'EOF'
import sys, time
n = int(sys.argv[1])
t = int(time.time() * 1e6) - 3600 * 10**6
units = ["kubelet.service", "containerd.service", "ssh.service", "cron.service"]
w = sys.stdout.write
for k in range(n):
    u = units[k % 4]
    msg = f"I1206 10:00:00.{k:06d} 1234 reconciler.go:{k % 997}] operation for volume {k} succeeded"
    if k % 50 == 0:
        msg += " " + "detail " * 120
    w(f"__REALTIME_TIMESTAMP={t + k * 10}\n__MONOTONIC_TIMESTAMP={k}\n"
      f"_BOOT_ID=0123456789abcdef0123456789abcdef\nMESSAGE={msg}\nPRIORITY={k % 8}\n"
      f"_SYSTEMD_UNIT={u}\nSYSLOG_IDENTIFIER={u.split('.')[0]}\n_PID={1000 + k % 7}\n"
      f"_HOSTNAME=bench\n_TRANSPORT=stdout\n_COMM={u.split('.')[0]}\n\n")
EOF
"$remote" --output="$tmp/journal/system.journal" - < "$tmp/in.export" 2>/dev/null
files=$(ls "$tmp/journal"/*.journal | wc -l)
entries=$(journalctl --directory "$tmp/journal" -o cat 2>/dev/null | wc -l)
echo "journal: $entries entries in $files file(s), $(du -sh "$tmp/journal" | cut -f1)"

# journalctl: CPU of reading and printing every entry in the export format.
TIMEFORMAT='%3U %3S'
jc=$( { time journalctl --directory "$tmp/journal" -o export > /dev/null 2>&1; } 2>&1 )
jc_us=$(python3 -c "u, s = map(float, '$jc'.split()); print(int((u + s) * 1e6))")

port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sport=$(port)
aport=$(port)
"$lumen" server --http-addr "127.0.0.1:$sport" --data-dir "$tmp/server" --mqtt-listen off \
  --otlp-grpc-addr 127.0.0.1:0 > /dev/null 2>&1 &
server_pid=$!
cat > "$tmp/agent.toml" <<EOF
[log]
level = "warn"

[agent]
server = "http://127.0.0.1:$sport"
pods_dir = "$tmp/pods"
data_dir = "$tmp/agent-data"
node_name = "bench"
http_addr = "127.0.0.1:$aport"
kubernetes_api = "off"
node_metrics = false
logs = false
journal_dirs = ["$tmp/journal"]
journal_max_age = "0s"
EOF
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$sport/ready" > /dev/null && break; sleep 0.1; done
"$lumen" agent --config "$tmp/agent.toml" > /dev/null 2>&1 &
agent_pid=$!

count() {
  curl -s -X POST "http://127.0.0.1:$sport/api/v1/sql" -d 'SELECT count(*) AS n FROM logs' \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["rows"][0]["n"])' 2>/dev/null || echo 0
}
start=$(date +%s)
while [ "$(count)" -lt "$entries" ]; do
  if [ $(( $(date +%s) - start )) -gt 600 ]; then echo "benches/journal.sh: not all entries arrived in 10 min" >&2; exit 1; fi
  sleep 0.5
done
# utime + stime of the agent process, in clock ticks.
ticks=$(awk '{print $14 + $15}' "/proc/$agent_pid/stat")
agent_us=$(python3 -c "print(int($ticks * 1e6 / $(getconf CLK_TCK)))")

python3 - "$entries" "$agent_us" "$jc_us" "$lumen" <<'EOF'
import sys
n, agent, jc, binary = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print(f"lumen agent ({binary}): {agent / n:.2f} CPU µs/entry (read, map, batch, buffer, ship)")
print(f"journalctl -o export:  {jc / n:.2f} CPU µs/entry (read, print)")
print(f"ratio agent/journalctl: {agent / max(jc, 1):.2f}")
EOF
