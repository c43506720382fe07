#!/usr/bin/env python3
"""A dashboard's refresh, with and without the PromQL results cache (issue 23).

Over the metric store benches/e2e_metrics.sh leaves (E2E_OUT/data-metrics-lumen, copied), a release
`lumen server` answers each range query of that script over its 2 h 05 min window (step 15 s) once, then
REFRESHES more times with the window moved forward by one step each time, as Grafana does every refresh
(the window's last step has no samples past the workload's end, so each refresh has one new step to
evaluate). The same sequence runs on a second server with query.results_cache_max_bytes = 0 and, when
/usr/bin/victoria-metrics (VM_BIN) and E2E_OUT/data-metrics-victoriametrics exist, on VictoriaMetrics over
a copy of its store from the same e2e run, with its caches on as it ships (-search.latencyOffset=0s, as
in e2e_metrics.sh, so that the last samples are visible). Prints per query the median wall time (client)
of the refreshes on each, and checks that both Lumen servers give the same answer to every refresh and
VictoriaMetrics the same number of series and points.

Usage: benches/promql_refresh.py [--refreshes N]   (E2E_OUT as for e2e_metrics.sh, default benches/out)
Needs: a release build, a finished benches/e2e_metrics.sh run with lumen.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from bucket_cache import free_port  # benches/ is the script's directory, first on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
OUT = os.environ.get("E2E_OUT", "benches/out")
BIN = "target/release/lumen"
QUERIES = {
    "rate": "rate(node_cpu_seconds_total[5m])",
    "sum_by": "sum by (mode) (rate(node_cpu_seconds_total[5m]))",
    "quantile": "quantile(0.9, sum by (instance) (rate(node_network_receive_bytes_total[5m])))",
    "histogram_quantile": "histogram_quantile(0.9, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
}


class Server:
    def __init__(self, name, data, cache_bytes):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        conf = f"{OUT}/refresh-{name}.toml"
        with open(conf, "w") as f:
            f.write(f"[query]\nresults_cache_max_bytes = {cache_bytes}\n")
        self.proc = subprocess.Popen(
            [BIN, "server", "--config", conf, "--data-dir", data, "--http-addr", f"127.0.0.1:{self.port}",
             "--mqtt-listen", "off", "--otlp-grpc-addr", "127.0.0.1:0", "--retention", "36500d"],
            stdout=open(f"{OUT}/refresh-{name}.log", "w"), stderr=subprocess.STDOUT, env=dict(os.environ, RUST_LOG="warn"))
        for _ in range(3000):
            try:
                urllib.request.urlopen(self.base + "/ready", timeout=2).read()
                return
            except Exception:
                time.sleep(0.02)
        sys.exit(f"server {name} not ready")

    def query(self, q, start, end):
        params = urllib.parse.urlencode({"query": q, "start": start, "end": end, "step": 15})
        t = time.monotonic()
        body = urllib.request.urlopen(f"{self.base}/api/v1/query_range?{params}", timeout=120).read()
        return (time.monotonic() - t) * 1000, json.loads(body)["data"]["result"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)


class Vm(Server):
    def __init__(self, binary, data):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, f"-storageDataPath={data}", f"-httpListenAddr=127.0.0.1:{self.port}", "-search.latencyOffset=0s",
             "-retentionPeriod=100y"],
            stdout=open(f"{OUT}/refresh-vm.log", "w"), stderr=subprocess.STDOUT)
        for _ in range(3000):
            try:
                urllib.request.urlopen(self.base + "/health", timeout=2).read()
                return
            except Exception:
                time.sleep(0.02)
        sys.exit("VictoriaMetrics not ready")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--refreshes", type=int, default=30)
    args = ap.parse_args()
    src = f"{OUT}/data-metrics-lumen"
    if not os.path.isdir(src):
        sys.exit(f"no {src}: run benches/e2e_metrics.sh --systems lumen first")
    servers = {}
    for name, cache in (("cached", "33554432"), ("uncached", "0")):
        d = f"{OUT}/refresh-data-{name}"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        if os.path.exists(f"{d}/lock"):
            os.remove(f"{d}/lock")
        servers[name] = Server(name, d, cache)
    vm_bin = os.environ.get("VM_BIN", "/usr/bin/victoria-metrics")
    vm_src = f"{OUT}/data-metrics-victoriametrics"
    if os.access(vm_bin, os.X_OK) and os.path.isdir(vm_src):
        d = f"{OUT}/refresh-data-vm"
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(vm_src, d)
        servers["victoriametrics"] = Vm(vm_bin, d)
    try:
        for name, q in QUERIES.items():
            with open(f"{OUT}/query-lumen-{name}.json") as f:
                saved = json.load(f)["data"]["result"]
            ts = [float(p[0]) for s in saved for p in s["values"]]
            start, end = min(ts), max(ts)
            times = {k: [] for k in servers}
            first = {}
            for k in range(args.refreshes + 1):
                answers = {}
                for sname, server in servers.items():
                    ms, answer = server.query(q, start + 15 * k, end + 15 * k)
                    answers[sname] = answer
                    if k == 0:
                        first[sname] = ms
                    else:
                        times[sname].append(ms)
                if answers["cached"] != answers["uncached"]:
                    sys.exit(f"{name}: the cached answer differs at refresh {k}")
                if "victoriametrics" in answers:
                    shape = lambda a: (len(a), sum(len(x["values"]) for x in a))  # noqa: E731
                    if shape(answers["victoriametrics"]) != shape(answers["cached"]):
                        print(f"WARNING: {name} refresh {k}: VictoriaMetrics answered {shape(answers['victoriametrics'])}"
                              f" (series, points), Lumen {shape(answers['cached'])}", file=sys.stderr)
            c, u = statistics.median(times["cached"]), statistics.median(times["uncached"])
            out = {"query": name, "first_ms_cached": round(first["cached"], 1),
                   "first_ms_uncached": round(first["uncached"], 1), "refresh_ms_cached": round(c, 1),
                   "refresh_ms_uncached": round(u, 1), "cached_over_uncached": round(c / u, 2),
                   "refreshes": args.refreshes, "answers_equal": True}
            if "victoriametrics" in times:
                vm = statistics.median(times["victoriametrics"])
                out.update({"first_ms_vm": round(first["victoriametrics"], 1), "refresh_ms_vm": round(vm, 1),
                            "cached_over_vm": round(c / vm, 2)})
            print(json.dumps(out), flush=True)
    finally:
        for s in servers.values():
            s.stop()


if __name__ == "__main__":
    main()
