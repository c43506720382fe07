#!/usr/bin/env python3
"""How often compaction rewrites a row while the current day fills (its write amplification).

Starts a release `lumen server` with `store.maintenance_interval` shortened (default 2 s, so that a short
run sees many compaction rounds), sends the Loki push bodies that `benches/e2e_logs.sh` generated
(benches/out/work-loki-*) with their timestamps moved to now, so that every row lands in the current day,
over --concurrency connections, then waits --settle seconds for the last rounds. Prints one JSON object:
lines sent, rows flushed, rows written by compaction, their ratio (rows rewritten per flushed row), the
number of compactions, parts at the end, and the server's CPU per line (user + system, whole run).

Usage: benches/compaction_steady.py [--lines N] [--concurrency N] [--interval 2s] [--settle S]
Needs: a release build (cargo build --release) and a run of benches/e2e_logs.sh (for the bodies).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bucket_cache import free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def metric(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=3_000_000)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--interval", default="2s", help="store.maintenance_interval")
    ap.add_argument("--settle", type=float, default=12.0)
    args = ap.parse_args()

    works = sorted(glob.glob(os.path.join(ROOT, "benches/out/work-loki-*")))
    if not works:
        sys.exit("run benches/e2e_logs.sh first: it generates the Loki bodies in benches/out/work-loki-*")
    bodies = []
    for path in sorted(glob.glob(os.path.join(works[0], "*"))):
        if path.endswith("meta.json"):
            continue
        try:
            with open(path, "rb") as f:
                bodies.append(json.load(f))
        except ValueError:
            continue
        if sum(len(s["values"]) for b in bodies for s in b["streams"]) >= 200_000:
            break
    binary = os.path.join(ROOT, "target/release/lumen")
    if not os.access(binary, os.X_OK):
        sys.exit("build first: cargo build --release")

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "lumen.toml")
        with open(config, "w") as f:
            f.write(f'[store]\nmaintenance_interval = "{args.interval}"\n')
        server = subprocess.Popen(
            [binary, "server", "--config", config, "--data-dir", os.path.join(tmp, "data"),
             "--http-addr", f"127.0.0.1:{port}", "--mqtt-listen", "off", "--otlp-grpc-addr", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    urllib.request.urlopen(base + "/ready", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            cpu0 = cpu_seconds(server.pid)
            sent = [0]
            lock = threading.Lock()

            def sender(k):
                i = k
                while True:
                    body = bodies[i % len(bodies)]
                    i += args.concurrency
                    n = sum(len(s["values"]) for s in body["streams"])
                    with lock:
                        if sent[0] >= args.lines:
                            return
                        sent[0] += n
                    now = time.time_ns()
                    out = {"streams": [{"stream": s["stream"],
                                        "values": [[str(now + j), v[1]] for j, v in enumerate(s["values"])]}
                                       for s in body["streams"]]}
                    req = urllib.request.Request(base + "/loki/api/v1/push", data=json.dumps(out).encode(),
                                                 headers={"Content-Type": "application/json"})
                    urllib.request.urlopen(req, timeout=60).read()

            started = time.time()
            threads = [threading.Thread(target=sender, args=(k,)) for k in range(args.concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            send_s = time.time() - started
            time.sleep(args.settle)
            text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
            stats = json.loads(urllib.request.urlopen(
                urllib.request.Request(base + "/api/v1/admin/flush", method="POST"), timeout=60).read())
            cpu = cpu_seconds(server.pid) - cpu0
        finally:
            server.terminate()
            server.wait()
    flushed = metric(text, "lumen_store_flushed_rows_total")
    compacted = metric(text, "lumen_store_compacted_rows_total")
    print(json.dumps({
        "lines": sent[0], "send_s": round(send_s, 1), "interval": args.interval,
        "flushed_rows": int(flushed), "compacted_rows": int(compacted),
        "rewrites_per_row": round(compacted / flushed, 2) if flushed else None,
        "compactions": int(metric(text, "lumen_store_compactions_total")),
        "parts_at_end": stats["parts"],
        "server_cpu_us_per_line": round(cpu / sent[0] * 1e6, 2),
    }))


if __name__ == "__main__":
    main()
