#!/usr/bin/env python3
"""Send every OTLP logs protobuf body in a directory (made by otlp_bodies) to a server's OTLP gRPC logs
Export method, over one channel with --concurrency calls in flight, optionally gzip-compressed by grpcio.
With --pid, report the server's CPU time per line and peak memory, as ../shared/bench/send.py does.

Usage: otlp_grpc_send.py --target 127.0.0.1:4317 --dir DIR [--concurrency 4] [--gzip] [--pid PID]
Prints one JSON object: lines, bodies, seconds, lines_per_s, errors, and with --pid server_cpu_s,
server_cpu_us_per_line, server_peak_rss_mb.
"""
import argparse
import json
import os
import sys
import threading
import time

import grpc


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--pid", type=int)
    args = ap.parse_args()
    meta = json.load(open(os.path.join(args.dir, "meta.json")))
    files = sorted(f for f in os.listdir(args.dir) if f != "meta.json")
    bodies = [open(os.path.join(args.dir, f), "rb").read() for f in files]
    compression = grpc.Compression.Gzip if args.gzip else grpc.Compression.NoCompression
    options = [("grpc.max_send_message_length", 64 << 20)]
    channel = grpc.insecure_channel(args.target, options=options, compression=compression)
    export = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
    errors = []
    next_body = iter(range(len(bodies)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(next_body, None)
            if i is None:
                return
            try:
                export(bodies[i], timeout=60)
            except grpc.RpcError as e:
                errors.append(f"{files[i]}: {e.code().name} {e.details()}")

    cpu0 = cpu_seconds(args.pid) if args.pid else None
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    out = {"lines": meta["lines"], "bodies": len(bodies), "seconds": round(secs, 3),
           "lines_per_s": round(meta["lines"] / secs), "errors": len(errors)}
    if args.pid:
        cpu = cpu_seconds(args.pid) - cpu0
        out.update(server_cpu_s=round(cpu, 3), server_cpu_us_per_line=round(cpu / meta["lines"] * 1e6, 2),
                   server_peak_rss_mb=peak_rss_mb(args.pid))
    print(json.dumps(out))
    for e in errors[:5]:
        print(e, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
