"""Optional OpenTelemetry export of our spans, when OTEL_EXPORTER_OTLP_ENDPOINT is set.

The spans are the ones core/tracing.py mints (ingest, job run, delivery attempt, event
processing) with the very ids we put on records and send as ``traceparent``, so a trace in the
backend lines up with what receivers and logs saw. They are built as the SDK's ``ReadableSpan``
with explicit context and handed to a BatchSpanProcessor over the OTLP/HTTP exporter: the SDK's
tracer cannot be given a span id. The SDK is the ``otel`` extra, imported only when configured;
without it one warning is logged and nothing is exported. Unsampled traces (flags bit 0 clear)
are not exported, as the caller asked.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from typing import Any

log = logging.getLogger(__name__)

KINDS = ("internal", "server", "client", "consumer", "producer")


class _Exporter:
    """The SDK's pieces for one process: a resource and a batch processor over OTLP/HTTP."""

    def __init__(self, endpoint: str, service: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self.resource = Resource.create({"service.name": service})
        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
        self.processor = BatchSpanProcessor(exporter)
        self.span_type, self.context, self.flags = ReadableSpan, SpanContext, TraceFlags
        self.kinds = {name: getattr(SpanKind, name.upper()) for name in KINDS}
        self.status = {False: Status(StatusCode.UNSET), True: Status(StatusCode.ERROR)}

    def record(
        self,
        name: str,
        ids: tuple[str, str, str, str],
        started_ns: int,
        kind: str,
        attributes: dict[str, Any],
        failed: bool,
    ) -> None:
        trace_id, span_id, parent_id, hex_flags = ids
        flags = self.flags(int(hex_flags, 16))
        context = self.context(int(trace_id, 16), int(span_id, 16), False, flags)
        parent = None
        if parent_id:
            parent = self.context(int(trace_id, 16), int(parent_id, 16), True, flags)
        span = self.span_type(
            name=name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            kind=self.kinds[kind],
            start_time=started_ns,
            end_time=time.time_ns(),
            status=self.status[failed],
        )
        self.processor.on_end(span)


_exporter: _Exporter | None = None
_looked = False


def configure(endpoint: str | None, service: str = "webhook-gateway") -> bool:
    """Export spans to ``endpoint`` (OTLP/HTTP) from now on; False when off or the SDK is absent."""
    global _exporter, _looked
    _looked = True
    _exporter = None
    if not endpoint:
        return False
    try:
        _exporter = _Exporter(endpoint, service)
        atexit.register(flush)
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed "
            "(pip install 'webhook-gateway[otel]'); spans are not exported"
        )
        return False
    return True


def exporting() -> bool:
    """Whether spans are exported; the first call reads the settings."""
    if not _looked:
        from core.settings import get_settings

        settings = get_settings()
        configure(settings.otel_exporter_otlp_endpoint, settings.otel_service_name)
    return _exporter is not None


def record(
    name: str,
    ids: tuple[str, str, str, str],
    started_ns: int,
    *,
    kind: str = "internal",
    attributes: dict[str, Any] | None = None,
    failed: bool = False,
) -> None:
    """Export one finished span that began at ``started_ns`` (if exporting); ``ids`` are its
    trace id, span id, parent span id ('' for none) and flags, as hex (core/tracing.py)."""
    if exporting():
        assert _exporter is not None
        _exporter.record(name, ids, started_ns, kind, attributes or {}, failed)


def flush(timeout_ms: int = 5000) -> None:
    """Send what is batched (at a worker's shutdown: the processor's thread is a daemon)."""
    if _exporter is not None:
        _exporter.processor.force_flush(timeout_ms)


os.register_at_fork(after_in_child=lambda: globals().update(_exporter=None, _looked=False))
