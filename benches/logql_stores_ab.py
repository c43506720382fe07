#!/usr/bin/env python3
"""A/B of two log stores under the same release binary: LogQL q1 and q2 of benches/logql_queries.sh.

Starts `target/release/lumen server` on a copy of each store (say one written before a change of the
part format and one after, both by benches/e2e_logs.sh), then asks each query of both servers in turn,
one warm-up and N timed runs, so that the machine's noise falls on both. The cache of scan answers is
off (`store.scan_cache_max_bytes = 0`): every run is read from the parts. Prints per query and store the
median and minimum wall time and the server CPU time per query (utime + stime of the process), and the
answers, which must agree.

Usage: python3 benches/logql_stores_ab.py STORE_A STORE_B [--runs N]
Needs: a release build (cargo build --release), python3.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

# Store paths are taken from where the script was started: importing bucket_cache moves to the repository.
CWD = os.getcwd()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bucket_cache import cpu as cpu_seconds, free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/lumen")
QUERIES = {
    "q1": 'sum(count_over_time({app=~".+"} |= "error" [1d]))',
    "q2": 'sum(count_over_time({app="hdfs"} |= "Receiving" [1d]))',
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stores", nargs=2)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    args.stores = [os.path.join(CWD, s) for s in args.stores]
    work = tempfile.mkdtemp(prefix="lumen-ab-")
    servers = []
    try:
        ends = []
        config = os.path.join(work, "lumen.toml")
        with open(config, "w") as f:
            f.write("[store]\nscan_cache_max_bytes = 0\n")
        for i, src in enumerate(args.stores):
            data = os.path.join(work, f"store{i}")
            shutil.copytree(src, data)
            if os.path.exists(os.path.join(data, "lock")):
                os.remove(os.path.join(data, "lock"))
            manifest = json.load(open(os.path.join(data, "manifest.json")))
            ends.append(max(p["max_time"] for p in manifest["parts"]) + 1)
            port = free_port()
            cmd = [BIN, "server", "--config", config, "--data-dir", data, "--http-addr", f"127.0.0.1:{port}", "--mqtt-listen", "off",
                   "--otlp-grpc-addr", f"127.0.0.1:{free_port()}", "--retention", "36500d"]
            servers.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port))
        for proc, port in servers:
            for _ in range(150):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1)
                    break
                except Exception:
                    time.sleep(0.2)
        # Both stores hold the same workload: ask both at the later end.
        at = str(max(ends))

        def ask(port, query):
            url = f"http://127.0.0.1:{port}/loki/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": at})
            t = time.perf_counter()
            answer = json.load(urllib.request.urlopen(url))
            return time.perf_counter() - t, answer["data"]["result"][0]["value"][1]

        for name, query in QUERIES.items():
            walls = [[], []]
            cpu = [0.0, 0.0]
            answers = [None, None]
            for _, port in servers:
                ask(port, query)
            for _ in range(args.runs):
                for i, (proc, port) in enumerate(servers):
                    before = cpu_seconds(proc.pid)
                    wall, answers[i] = ask(port, query)
                    cpu[i] += cpu_seconds(proc.pid) - before
                    walls[i].append(wall)
            for i in (0, 1):
                w = sorted(walls[i])
                print(f"{name} {args.stores[i]}: median {w[len(w) // 2] * 1000:.1f} ms, min {w[0] * 1000:.1f} ms, "
                      f"server CPU {cpu[i] / args.runs * 1000:.0f} ms per query, answer {answers[i]}")
            if answers[0] != answers[1]:
                print(f"WARNING: {name} answers differ")
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
