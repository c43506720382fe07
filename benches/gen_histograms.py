#!/usr/bin/env python3
"""Classic-histogram companion workload for benches/e2e_metrics.sh, as Prometheus remote-write request bodies.

An HTTP-server-like latency histogram, `http_request_duration_seconds`, scraped from 20 instances
(instance="host-NN", job="node") for 2 handlers: per (instance, handler) 12 `_bucket` series (le = the
client libraries' default buckets 0.005 .. 10, plus +Inf), `_sum` and `_count`: 20 x 2 x 14 = 560 series.
500 scrapes at 15 s, over the same time range as ../shared/bench/gen_metrics.py given the same END (the last
scrape second; meta start_s = END - 500 x 15): 280,000 samples.

Each scrape interval draws a request count (about rps x 15, rps following a slow per-instance wave) and one
log-normal latency per request (per-handler location, with a few slow incidents per instance), then adds them to
monotone cumulative counters: bucket and count values are integers, sum is a decimal (rounded to 0.1 ms).
Counters start at a random "uptime" worth of requests. All series of one instance scrape share a timestamp.
Deterministic (seeded): the same END gives the same bodies.

Bodies are written like gen_metrics.py does (same layout, so send.py --per-shard sends them): one TimeSeries entry
per sample, at most 2,000 samples per body, 4 shards by series (crc32 of the labels), time-ordered within a shard,
files NNNNN-sK.rw, snappy-compressed with `cramjam` when installed (else valid uncompressed snappy literals),
and OUT_DIR/meta.json with lines/samples, series, requests, start_s, end_s.

Usage: gen_histograms.py OUT_DIR [END_UNIX_SECONDS]
"""
import bisect
import json
import math
import os
import random
import struct
import sys
import time
import zlib

try:
    import cramjam
except ImportError:
    cramjam = None

INSTANCES, SCRAPES, STEP = 20, 500, 15
NSHARDS, PER_BODY = 4, 2000
METRIC = "http_request_duration_seconds"
BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]  # + +Inf
# handler: (median latency s, log-normal sigma, requests/s range)
HANDLERS = {"/api/v1/query": (0.045, 1.1, (2.0, 12.0)), "/metrics": (0.004, 0.6, (0.5, 2.0))}


def uvarint(n):
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(num, payload):  # protobuf length-delimited field
    return uvarint(num << 3 | 2) + uvarint(len(payload)) + payload


def encode_labels(labels):  # prompb.Label entries (field 1 of TimeSeries), sorted by name
    return b"".join(field_bytes(1, field_bytes(1, k.encode()) + field_bytes(2, labels[k].encode()))
                    for k in sorted(labels))


def encode_sample(value, t_ms):  # prompb.Sample (field 2 of TimeSeries): double value = 1, int64 timestamp = 2
    return field_bytes(2, b"\x09" + struct.pack("<d", value) + b"\x10" + uvarint(t_ms))


def snappy_raw(data):
    if cramjam is not None:
        return bytes(cramjam.snappy.compress_raw(data))
    out = bytearray(uvarint(len(data)))  # uncompressed length, then literal elements of at most 64 KiB
    for i in range(0, len(data), 1 << 16):
        chunk = data[i:i + (1 << 16)]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + struct.pack("<H", n)
        out += chunk
    return bytes(out)


def le_text(b):  # as the Go client writes it: 0.005, 1, 2.5, 10
    return "+Inf" if b == math.inf else repr(b).removesuffix(".0")


def lognormal_cdf(x, mu, sigma):
    return 0.5 * (1 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2))))


class Histogram:
    """One (instance, handler) histogram: cumulative bucket counts, count and sum."""

    def __init__(self, rng, instance, handler):
        median, sigma, (lo, hi) = HANDLERS[handler]
        self.rng, self.mu, self.sigma = rng, math.log(median * rng.uniform(0.7, 1.4)), sigma
        self.rps, self.phase = rng.uniform(lo, hi), rng.uniform(0, 2 * math.pi)
        # A few slow periods (e.g. a busy backend): latency x3..x8 for 2 to 15 minutes.
        self.incidents = []
        for _ in range(rng.randrange(0, 3)):
            k0 = rng.randrange(0, SCRAPES)
            self.incidents.append((k0, k0 + rng.randrange(8, 60), math.log(rng.uniform(3, 8))))
        base = {"__name__": "", "handler": handler, "instance": instance, "job": "node"}
        self.labels = [encode_labels({**base, "__name__": METRIC + "_bucket", "le": le_text(b)})
                       for b in BUCKETS + [math.inf]]
        self.labels += [encode_labels({**base, "__name__": METRIC + "_sum"}),
                        encode_labels({**base, "__name__": METRIC + "_count"})]
        # Counters as after days of uptime; the buckets follow the latency distribution.
        count = int(self.rps * rng.uniform(86400, 30 * 86400))
        self.buckets = [int(count * lognormal_cdf(b, self.mu, sigma)) for b in BUCKETS] + [count]
        self.sum = count * math.exp(self.mu + sigma * sigma / 2)

    def scrape(self, k):
        """Adds the requests of scrape interval k; returns the values in the order of self.labels."""
        rng = self.rng
        rate = self.rps * (1 + 0.4 * math.sin(2 * math.pi * k / 240 + self.phase))  # 1 h wave
        mean = rate * STEP
        n = max(0, round(rng.gauss(mean, math.sqrt(mean))))
        mu = self.mu + sum(d for a, b, d in self.incidents if a <= k < b)
        per_bucket = [0] * (len(BUCKETS) + 1)
        for _ in range(n):
            lat = rng.lognormvariate(mu, self.sigma)
            per_bucket[bisect.bisect_left(BUCKETS, lat)] += 1  # le is inclusive: lat <= b
            self.sum += lat
        acc = 0
        for i, c in enumerate(per_bucket):
            acc += c
            self.buckets[i] += acc
        return [float(v) for v in self.buckets] + [round(self.sum, 4), float(self.buckets[-1])]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    end_s = int(sys.argv[2]) if len(sys.argv) > 2 else int(time.time()) // STEP * STEP
    first_s = end_s - (SCRAPES - 1) * STEP
    rng = random.Random(20261122)
    hists = [(i, Histogram(rng, f"host-{i:02d}", h)) for i in range(INSTANCES) for h in HANDLERS]
    offsets = [rng.randrange(0, 15000) for _ in range(INSTANCES)]  # each instance's scrape phase, ms
    shard = {lp: zlib.crc32(lp) % NSHARDS for _, h in hists for lp in h.labels}
    os.makedirs(out, exist_ok=True)
    pending = [[] for _ in range(NSHARDS)]
    bodies = [0] * NSHARDS
    raw = compressed = samples = 0

    def flush(sh):
        nonlocal raw, compressed
        req = b"".join(pending[sh])
        body = snappy_raw(req)
        raw += len(req)
        compressed += len(body)
        with open(os.path.join(out, f"{bodies[sh]:05d}-s{sh}.rw"), "wb") as f:
            f.write(body)
        bodies[sh] += 1
        pending[sh] = []

    for k in range(SCRAPES):
        ts = [(first_s + k * STEP) * 1000 - 15000 + offsets[i] + rng.randrange(0, 4) for i in range(INSTANCES)]
        for i, h in sorted(hists, key=lambda ih: ts[ih[0]]):  # strictly time-ordered within a shard
            t = ts[i]
            for lp, v in zip(h.labels, h.scrape(k)):
                sh = shard[lp]
                pending[sh].append(field_bytes(1, lp + encode_sample(v, t)))
                samples += 1
                if len(pending[sh]) >= PER_BODY:
                    flush(sh)
    for sh in range(NSHARDS):
        if pending[sh]:
            flush(sh)
    meta = {"lines": samples, "samples": samples, "series": len(shard), "requests": sum(bodies),
            "per_shard": bodies, "raw_bytes": raw, "snappy_bytes": compressed,
            "start_s": first_s - STEP, "end_s": end_s, "metric": METRIC,
            "buckets": [le_text(b) for b in BUCKETS + [math.inf]], "handlers": list(HANDLERS)}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
