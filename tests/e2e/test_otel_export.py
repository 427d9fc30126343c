"""OpenTelemetry export (core/otel.py) to a real OTLP/HTTP receiver on loopback: the ingest, job
run and delivery attempt spans arrive with the ids we record and send as ``traceparent``."""

from __future__ import annotations

import gzip
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from core import otel
from gateway.main import create_app
from tests.conftest import AUTH, Processes, make_settings, process_env, wait_for
from tests.e2e.receiver import Receiver

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

pytestmark = pytest.mark.e2e

TRACE = "5bf92f3577b34da6a3ce929d0e0e4737"
CALLER_SPAN = "10f067aa0ba902b8"


class Collector:
    """An OTLP/HTTP trace receiver: records every span POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = trace_service.ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(self.path, request)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, path: str, request: Any) -> None:
        with self.lock:
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: a.value for a in span.attributes}
                        self.spans.append(
                            {
                                "path": path,
                                "service": service.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_id": span.parent_span_id.hex(),
                                "attributes": attributes,
                                "duration": span.end_time_unix_nano - span.start_time_unix_nano,
                            }
                        )

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [span for span in self.spans if span["name"] == name]


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory, collector: Collector
) -> Iterator[tuple[TestClient, Processes]]:
    url = f"{redis_server}/5"
    redis.Redis.from_url(url).flushdb()
    prefix = f"otel-{uuid.uuid4().hex[:6]}:"
    tmp: Path = tmp_path_factory.mktemp("otel")
    procs = Processes(tmp)
    env = process_env(
        url,
        prefix,
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_SERVICE_NAME="gateway-worker",
        OTEL_BSP_SCHEDULE_DELAY="100",  # the SDK's batch interval (ms): spans arrive promptly
    )
    procs.start(["worker", "default", "--concurrency", "2"], env)
    procs.start(["worker", "callbacks", "--concurrency", "2"], env)
    settings = make_settings(
        url, prefix, outbound_allow_networks=["127.0.0.1/32"], outbound_allow_http=True
    )
    assert otel.configure(collector.url, "gateway-api")
    try:
        with TestClient(create_app(settings)) as client:
            yield client, procs
    finally:
        otel.flush()
        otel.configure(None)
        procs.stop()


def test_ingest_job_run_and_delivery_spans_share_the_trace_we_send(
    api: Any, collector: Collector, receiver: Receiver
) -> None:
    client, procs = api
    headers = {**AUTH, "traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"}
    body = {"message": "otel", "callback_url": f"{receiver.url}/otel"}
    response = client.post("/v1/jobs/echo", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    otel.flush()

    def exported() -> bool:
        return all(collector.named(n) for n in ("POST /v1/jobs", "job.run", "delivery.attempt"))

    try:
        wait_for(exported, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{collector.spans}\n{procs.logs()}") from None
    [ingest] = collector.named("POST /v1/jobs")
    [run] = collector.named("job.run")
    [attempt] = collector.named("delivery.attempt")
    assert ingest["path"] == "/v1/traces"
    assert (ingest["service"], run["service"]) == ("gateway-api", "gateway-worker")
    assert {ingest["trace_id"], run["trace_id"], attempt["trace_id"]} == {TRACE}
    # one tree: the caller's span -> ingest -> the job's run -> the callback's attempt
    assert ingest["parent_id"] == CALLER_SPAN
    assert run["parent_id"] == ingest["span_id"]
    assert attempt["parent_id"] == run["span_id"]
    assert run["attributes"]["gateway.job_id"].string_value == job_id
    assert ingest["duration"] >= 0 and run["duration"] >= 0
    # and the span the receiver was told about is the exported attempt span
    [callback] = receiver.on("/otel")
    assert callback.headers["traceparent"] == f"00-{TRACE}-{attempt['span_id']}-01"


def test_an_unsampled_trace_is_not_exported(api: Any, collector: Collector) -> None:
    client, _ = api
    trace = uuid.uuid4().hex
    headers = {**AUTH, "traceparent": f"00-{trace}-{CALLER_SPAN}-00"}
    response = client.post("/v1/jobs/echo", json={"message": "quiet"}, headers=headers)
    assert response.status_code == 202
    otel.flush()
    assert not [s for s in collector.spans if s["trace_id"] == trace]
