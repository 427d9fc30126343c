"""core/otel.py without the SDK: one warning, nothing exported, nothing raised."""

from __future__ import annotations

import sys

import pytest

from core import otel, tracing

SDK = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def test_without_the_sdk_export_is_off_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, SDK, None)  # as if the otel extra were not installed
    try:
        with caplog.at_level("WARNING", logger="core.otel"):
            assert otel.configure("http://127.0.0.1:4318") is False
        assert not otel.exporting()
        with tracing.traced(tracing.new_trace(), "job.run"):
            pass  # a named span with export off costs nothing and raises nothing
    finally:
        otel.configure(None)
    [warning] = caplog.records
    assert warning.levelname == "WARNING" and "SDK is not installed" in warning.getMessage()


def test_without_an_endpoint_nothing_is_exported() -> None:
    assert otel.configure(None) is False and not otel.exporting()
