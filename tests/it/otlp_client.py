"""A real OpenTelemetry client for tests/it/otlp.rs: the OpenTelemetry Python SDK and its OTLP exporters.

usage: otlp_client.py grpc <endpoint> <service> <tenant>
       otlp_client.py http - <service> <tenant>      (the base URL comes from OTEL_EXPORTER_OTLP_ENDPOINT)
       otlp_client.py bad-grpc <host:port>
       otlp_client.py grpc-auth <host:port> <write token> <read token>
       otlp_client.py grpc-tenant <host:port> <tenant>

grpc/http send logs through Python's logging module (some inside a span, so they carry trace ids) and
metrics of every instrument kind, gzip-compressed, then print what they sent as JSON. The http run
exports its counter with delta temporality, twice. bad-grpc calls the logs Export method with bytes that
are no protobuf, with an invalid tenant, and with an empty request, and prints each status code and
message it got back. grpc-auth calls it without a credential, with a read token, with a write token for
another tenant and with a write token, and prints each status code. With LUMEN_TOKEN set, grpc/http send
it as a bearer token.
"""

import json
import logging
import os
import sys

from opentelemetry.sdk.resources import Resource


def auth_header():
    token = os.environ.get("LUMEN_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def send(transport, endpoint, service, tenant):
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import Counter, MeterProvider
    from opentelemetry.sdk.metrics.export import AggregationTemporality, PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry.sdk.trace import TracerProvider

    if transport == "grpc":
        from grpc import Compression
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        common = dict(endpoint=endpoint, insecure=True, headers={"x-scope-orgid": tenant, **auth_header()},
                      compression=Compression.Gzip)
        temporality = {}
    else:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        # No endpoint: the exporters append /v1/logs and /v1/metrics to OTEL_EXPORTER_OTLP_ENDPOINT.
        common = dict(headers={"X-Scope-OrgID": tenant, **auth_header()}, compression=Compression.Gzip)
        temporality = {Counter: AggregationTemporality.DELTA}

    resource = Resource.create({
        "service.name": service,
        "service.instance.id": f"{service}-1",
        "k8s.namespace.name": "shop",
        "host.name": "node-7",
    })

    log_exporter = OTLPLogExporter(**common)
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    handler = LoggingHandler(level=logging.DEBUG, logger_provider=logger_provider)
    log = logging.getLogger(f"checkout.{transport}")
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    log.propagate = False

    tracer = TracerProvider(resource=resource).get_tracer("checkout")
    trace_id = None
    for i in range(50):
        log.info("order %d placed", i, extra={"order.id": i, "payment.method": "card"})
    with tracer.start_as_current_span("charge") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        log.error("payment declined for order 7", extra={"order.id": 7})
    log.warning("stock low")
    logger_provider.force_flush()
    logger_provider.shutdown()

    metric_exporter = OTLPMetricExporter(preferred_temporality=temporality, **common)
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)
    views = [View(instrument_name="rpc.latency", aggregation=ExponentialBucketHistogramAggregation())]
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader], views=views)
    meter = meter_provider.get_meter("checkout")
    orders = meter.create_counter("orders", unit="{order}", description="orders placed")
    duration = meter.create_histogram("http.server.duration", unit="ms", description="request time")
    latency = meter.create_histogram("rpc.latency", unit="ms")
    queue = meter.create_up_down_counter("queue.size", unit="{item}")
    meter.create_observable_gauge("cpu.utilization", unit="1",
                                  callbacks=[lambda options: [Observation(0.25, {"cpu": "0"})]])
    orders.add(5, {"payment.method": "card"})
    for ms in [3, 7, 12, 40, 90, 250, 700]:
        duration.record(ms, {"http.route": "/pay"})
    for ms in range(1, 101):
        latency.record(ms)
    queue.add(10)
    queue.add(-4)
    reader.force_flush()
    orders.add(3, {"payment.method": "card"})
    reader.force_flush()
    meter_provider.shutdown()
    print(json.dumps({"trace_id": trace_id, "logs": 52}))


def bad_grpc(target):
    import grpc

    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
    out = {}
    cases = {
        "garbage": (b"\xff\xff\xff\xff not a protobuf", None),
        "bad_tenant": (b"", [("x-scope-orgid", "bad tenant/..")]),
        "empty": (b"", None),
    }
    for name, (body, metadata) in cases.items():
        try:
            call(body, timeout=10, metadata=metadata)
            out[name] = {"code": "OK", "message": ""}
        except grpc.RpcError as e:
            out[name] = {"code": e.code().name, "message": e.details()}
    print(json.dumps(out))


def grpc_auth(target, writer, reader):
    import grpc

    channel = grpc.insecure_channel(target)
    call = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
    cases = {
        "none": [],
        "reader": [("authorization", f"Bearer {reader}")],
        "other_tenant": [("authorization", f"Bearer {writer}"), ("x-scope-orgid", "team-b")],
        "writer": [("authorization", f"Bearer {writer}")],
    }
    out = {}
    for name, metadata in cases.items():
        try:
            call(b"", timeout=10, metadata=metadata)
            out[name] = {"code": "OK", "message": ""}
        except grpc.RpcError as e:
            out[name] = {"code": e.code().name, "message": e.details()}
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "bad-grpc":
        bad_grpc(sys.argv[2])
    elif sys.argv[1] == "grpc-tenant":
        import grpc
        call = grpc.insecure_channel(sys.argv[2]).unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
        try:
            call(b"", timeout=10, metadata=[("x-scope-orgid", sys.argv[3])])
            print(json.dumps({"code": "OK", "message": ""}))
        except grpc.RpcError as e:
            print(json.dumps({"code": e.code().name, "message": e.details()}))
    elif sys.argv[1] == "grpc-auth":
        grpc_auth(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        send(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
