"""The log formatter: one JSON object a line with the ids in play, text with them appended, and
secrets masked in both."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from core import logs
from core.settings import Settings

SECRETS = ["sk-live-0123456789", "whsec_c2lnbmluZy1zZWNyZXQ=", "hunter2hunter2"]


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("tasks.test", logging.WARNING, __file__, 1, message, args, exc_info)


@pytest.fixture(autouse=True)
def clean_ids() -> Iterator[None]:
    logs.clear()
    yield
    logs.clear()


def test_a_json_line_has_the_fields_and_the_bound_ids() -> None:
    logs.bind(job_id="j1", kind="echo", attempt=2, queue="default")
    line = logs.GatewayFormatter("json").format(record("job %s done", "j1"))

    doc = json.loads(line)
    assert "\n" not in line
    assert doc["level"] == "WARNING" and doc["logger"] == "tasks.test"
    assert doc["message"] == "job j1 done" and doc["timestamp"].endswith("+00:00")
    assert (doc["job_id"], doc["kind"], doc["attempt"], doc["queue"]) == (
        "j1",
        "echo",
        2,
        "default",
    )
    assert "trace_id" not in doc and "event_id" not in doc


def test_a_deliverys_parent_binds_its_job_or_event() -> None:
    logs.bind(delivery_id="msg_1", parent="event:ev_9")
    assert logs.current_ids() == {"delivery_id": "msg_1", "event_id": "ev_9"}
    logs.clear()
    logs.bind(delivery_id="msg_2", parent="job:j7")
    assert logs.current_ids()["job_id"] == "j7"


def test_text_lines_carry_the_ids_too() -> None:
    logs.bind(event_id="ev_1", queue="webhooks")
    line = logs.GatewayFormatter("text").format(record("routed"))
    assert line.endswith("routed [event_id=ev_1 queue=webhooks]")


@pytest.mark.parametrize("style", ["json", "text"])
def test_secrets_and_url_credentials_are_masked_in_both_formats(style: str) -> None:
    formatter = logs.GatewayFormatter(style, SECRETS)
    try:
        raise RuntimeError(f"provider said: bad key {SECRETS[0]}")
    except RuntimeError as exc:
        line = formatter.format(
            record(
                "POST %s failed; retry %s with %s, broker %s, secret %s",
                "https://hooks.example.com/cb?token=tok-abcdef#frag",
                "http://user:pa55word@example.com/x",
                SECRETS[2],
                "redis://:redispass@10.0.0.1:6379/0",
                "c2lnbmluZy1zZWNyZXQ=",
                exc=exc,
            )
        )
    for leaked in (*SECRETS, "tok-abcdef", "pa55word", "redispass", "c2lnbmluZy1zZWNyZXQ="):
        assert leaked not in line
    assert "https://hooks.example.com/cb?***" in line
    assert "http://example.com/x" in line and "redis://10.0.0.1:6379/0" in line
    assert "RuntimeError" in line  # the traceback is kept, scrubbed


def test_urls_without_credentials_are_left_as_they_are() -> None:
    assert (
        logs.redact_url("see https://example.com/a/b and done")
        == "see https://example.com/a/b and done"
    )
    assert logs.redact_url("'https://h/cb?t=1'") == "'https://h/cb?***'"


def test_the_settings_formatter_masks_every_secret_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        api_keys=[SecretStr("api-key-planted")],
        smtp_password=SecretStr("smtp-pass-planted"),
        llm_api_key=SecretStr("llm-key-planted"),
    )
    formatter = logs.GatewayFormatter("text", logs.secrets_of(settings))
    line = formatter.format(
        record("%s %s %s", "api-key-planted", "smtp-pass-planted", "llm-key-planted")
    )
    assert "planted" not in line


def test_log_format_defaults_to_json_in_production_and_text_in_dev() -> None:
    dev = Settings(_env_file=None)  # type: ignore[call-arg]
    prod = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="production",
        api_keys=[SecretStr("a-real-key-123456")],
        signing_secrets=[SecretStr("whsec_cmVhbC1zaWduaW5nLXNlY3JldA==")],
    )
    assert (dev.log_format, prod.log_format) == ("text", "json")
    assert Settings(_env_file=None, log_format="json").log_format == "json"  # type: ignore[call-arg]


def test_ids_bound_in_one_thread_are_not_seen_in_another() -> None:
    logs.bind(job_id="main")
    seen: list[dict[str, object]] = []
    thread = threading.Thread(target=lambda: seen.append(logs.current_ids()))
    thread.start()
    thread.join()
    assert seen == [{}]


@pytest.mark.parametrize(
    ("task", "field"),
    [
        ("jobs.echo", "job_id"),
        ("callbacks.deliver", "delivery_id"),
        ("webhooks.process", "event_id"),
    ],
)
def test_celerys_received_line_carries_its_tasks_own_id(task: str, field: str) -> None:
    line = record("Task %(name)s[%(id)s] received", {"name": task, "id": "x1"})
    line.data = {"id": "x1", "name": task}  # Celery's extra

    assert json.loads(logs.GatewayFormatter("json").format(line))[field] == "x1"


def test_inbound_sources_secrets_are_masked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sources.toml"
    path.write_text('[sources.acme]\nscheme = "hmac"\nsecrets_env = ["E2E_ACME", "E2E_UNSET"]\n')
    monkeypatch.setenv("E2E_ACME", "acme-source-secret")
    monkeypatch.delenv("E2E_UNSET", raising=False)
    settings = Settings(_env_file=None, webhook_sources_file=path)  # type: ignore[call-arg]

    assert "acme-source-secret" in logs.secrets_of(settings)
    line = logs.GatewayFormatter("json", logs.secrets_of(settings)).format(
        record("sig check with %s", "acme-source-secret")
    )
    assert "acme-source-secret" not in line
