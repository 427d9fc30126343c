"""Structured logs from real processes: a job's id through its whole life in a worker's JSON log,
and no secret in any log line of an API and workers driven through failures that log."""

from __future__ import annotations

import base64
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from standardwebhooks.webhooks import Webhook

from gateway.embedded import free_port
from tests.conftest import Processes, api_ready, process_env, wait_for
from tests.smtp_sink import Recorder

FINAL = ("succeeded", "failed", "dead")


def json_lines(log: Path) -> list[dict[str, Any]]:
    """Every line of a log, each parsed as JSON (fails on the first line that is not)."""
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def wait_final(http: httpx.Client, job_id: str, procs: Processes) -> dict[str, Any]:
    """Poll the job until it is final."""

    def final() -> dict[str, Any] | None:
        view: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        return view if view["status"] in FINAL else None

    try:
        return wait_for(final, timeout=40)  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{procs.logs()}") from None


@pytest.fixture
def json_stack(
    redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Processes]]:
    """An API and a default-queue worker (the loop pool for callbacks too), LOG_FORMAT=json."""
    url = f"{redis_server}/3"
    redis.Redis.from_url(url).flushdb()
    procs = Processes(tmp_path_factory.mktemp("json-logs"))
    env = process_env(url, f"logs-{uuid.uuid4().hex[:6]}:", LOG_FORMAT="json")
    env["WORKER_METRICS_PORT"] = "0"
    procs.start(["worker", "default", "--concurrency", "2"], env)
    port = free_port()
    procs.start(["api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        yield base, procs
    finally:
        procs.stop()


def test_a_jobs_id_runs_through_the_workers_json_log(json_stack: tuple[str, Processes]) -> None:
    base, procs = json_stack
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    with httpx.Client(base_url=base, headers={"Authorization": "Bearer test-key-0123456789"}) as h:
        accepted = h.post(
            "/v1/jobs/echo",
            json={"message": "hi", "fail_attempts": 1},
            headers={"traceparent": traceparent},
        )
        job_id = accepted.json()["id"]
        assert wait_final(h, job_id, procs)["status"] == "succeeded"

        def its_lines() -> list[dict[str, Any]] | None:
            worker_log = procs.children[0][1]
            # Celery's own line about attempt 2 comes just after the final write
            lines = [doc for doc in json_lines(worker_log) if doc.get("job_id") == job_id]
            done = any(d.get("attempt") == 2 and "succeeded" in d["message"] for d in lines)
            return lines if done else None

        lines = wait_for(its_lines, timeout=10)
    assert all({"timestamp", "level", "logger", "message"} <= doc.keys() for doc in lines)
    # from the claim on: kind, attempt and queue as well
    claimed = [d for d in lines if "attempt" in d]
    assert all(d["kind"] == "echo" and d["queue"] == "default" for d in claimed)
    by_attempt = {
        d["attempt"]: [x["message"] for x in claimed if x["attempt"] == d["attempt"]]
        for d in claimed
    }
    # each run is a span of the trace the job came with: its lines carry that trace's id
    assert all(d.get("trace_id") == trace_id for d in claimed if "retry in" in d["message"])
    assert any(d.get("trace_id") == trace_id for d in claimed), claimed
    # attempt 1: the handler's failure and the retry; attempt 2: Celery's success line
    assert any("retry in" in m for m in by_attempt[1]), by_attempt
    assert any("succeeded" in m for m in by_attempt[2]), by_attempt
    # Celery's "received" lines (the consumer's, before the claim) carry the id as a field too
    received = [d for d in lines if "received" in d["message"]]
    assert len(received) == 2
    # the API's lines (uvicorn's start-up included) are JSON as well
    api_lines = json_lines(procs.children[1][1])
    assert any(d["logger"].startswith("uvicorn") for d in api_lines)


# Planted secrets: each must be in play (used by the processes) and in no log line.
PLANTED = {
    "api_key": "planted-api-key-7f3a9c",
    # a whsec_ secret's base64 part, and what it decodes to
    "signing": base64.b64encode(b"planted-signing-secret-5d1e").decode(),
    "signing_raw": "planted-signing-secret-5d1e",
    "smtp": "planted-smtp-password-88b2",
    "llm": "planted-llm-api-key-c40f",
    "url_token": "planted-url-token-1a6d",
    # an inbound source's verification secret (whsec_ + this), named by the sources file
    "source": base64.b64encode(b"planted-source-secret-93e7").decode(),
    "source_raw": "planted-source-secret-93e7",
    "forward_token": "planted-forward-token-2b8c",
}
SOURCES = """
[sources.partner]
scheme = "standard"
secrets_env = ["E2E_PARTNER_SECRET"]

[[sources.partner.routes]]
events = ["*"]
forward = ["{forward}"]
"""
FAST_RETRIES = json.dumps(
    {
        "callbacks": {"max_attempts": 2, "schedule": [0.2]},
        "llm": {"max_attempts": 2, "schedule": [0.2]},
    }
)


class _FailingLlm(BaseHTTPRequestHandler):
    """An LLM provider answering 500 and echoing the caller's Authorization header, as some do."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        echo = self.headers.get("authorization", "")
        body = json.dumps({"error": {"message": f"internal error for {echo}"}}).encode()
        self.send_response(500)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_reaches_any_log_line(
    log_format: str, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    llm = ThreadingHTTPServer(("127.0.0.1", 0), _FailingLlm)
    threading.Thread(target=llm.serve_forever, daemon=True).start()
    smtp = Controller(
        Recorder(),
        hostname="127.0.0.1",
        port=free_port(),
        # AUTH offered without TLS (loopback), and every login refused
        auth_require_tls=False,
        authenticator=lambda *_: AuthResult(success=False, handled=False),
    )
    smtp.start()
    url = f"{redis_server}/3"
    redis.Redis.from_url(url).flushdb()
    procs = Processes(tmp_path_factory.mktemp(f"secrets-{log_format}"))
    env = process_env(
        url,
        f"secrets-{uuid.uuid4().hex[:6]}:",
        LOG_FORMAT=log_format,
        WORKER_METRICS_PORT="0",
        SIGNING_SECRETS="whsec_" + PLANTED["signing"],
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp.port),
        SMTP_USERNAME="gateway",
        SMTP_PASSWORD=PLANTED["smtp"],
        LLM_BASE_URL=f"http://127.0.0.1:{llm.server_address[1]}",
        LLM_API_KEY=PLANTED["llm"],
        LLM_DEFAULT_MODEL="stub-model",
        OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32",
        OUTBOUND_ALLOW_HTTP="true",
        OUTBOUND_TIMEOUT_SECONDS="1",
        RETRY_POLICIES=FAST_RETRIES,
    )
    env["API_KEYS"] = PLANTED["api_key"]
    forward = f"http://127.0.0.1:{closed_port()}/fwd?token={PLANTED['forward_token']}"
    sources = procs.tmp / "sources.toml"
    sources.write_text(SOURCES.format(forward=forward))
    env.update(WEBHOOK_SOURCES_FILE=str(sources), E2E_PARTNER_SECRET="whsec_" + PLANTED["source"])
    # debug: the most a worker ever logs
    for queue in ("default", "callbacks", "email", "llm", "webhooks"):
        procs.start(["worker", queue, "--concurrency", "2", "--loglevel", "debug"], env)
    port = free_port()
    procs.start(["api", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    callback = f"http://127.0.0.1:{closed_port()}/cb?token={PLANTED['url_token']}"
    try:
        wait_for(lambda: api_ready(base), timeout=30)
        auth = {"Authorization": f"Bearer {PLANTED['api_key']}"}
        with httpx.Client(base_url=base, headers=auth, timeout=10) as http:
            bodies = {
                "echo": {"message": "hi", "callback_url": callback},
                "llm": {"messages": [{"role": "user", "content": "hi"}]},
                "email": {"to": "a@example.com", "subject": "s", "text": "t"},
            }
            jobs = {}
            for kind, body in bodies.items():
                accepted = http.post(f"/v1/jobs/{kind}", json=body)
                assert accepted.status_code == 202, accepted.text
                jobs[kind] = accepted.json()["id"]
            ends = {kind: wait_final(http, job_id, procs) for kind, job_id in jobs.items()}

            def dead_delivery() -> Any:
                found = http.get(f"/v1/jobs/{jobs['echo']}/deliveries").json()
                return found and found[0]["status"] == "dead"

            wait_for(dead_delivery, timeout=30)
            # an inbound webhook, forwarded to a closed port; and one with a bad signature
            body = json.dumps({"type": "thing.happened", "data": {}})
            msg_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
            signature = Webhook("whsec_" + PLANTED["source"]).sign(msg_id, now, body)
            headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp()))}
            good = http.post(
                "/v1/webhooks/partner",
                content=body,
                headers={
                    **headers,
                    "webhook-signature": signature,
                    "content-type": "application/json",
                },
            )
            assert good.status_code == 202, good.text
            bad = http.post(
                "/v1/webhooks/partner",
                content=body,
                headers={
                    **headers,
                    "webhook-signature": "v1,AAAA",
                    "content-type": "application/json",
                },
            )
            assert bad.status_code == 401
            forward_failed = f"{forward.split('?')[0]}?*** dead"
            wait_for(lambda: forward_failed in procs.logs(tail=None), timeout=30)
            # a wrong key, and the right one where no key is expected: nothing of either is logged
            http.get("/v1/jobs/nope", headers={"Authorization": f"Bearer {PLANTED['api_key']}x"})
        logs = procs.logs(tail=None)

        # the failures happened, and logged: the lines that could have carried the secrets exist
        assert ends["echo"]["status"] == "succeeded"
        assert ends["llm"]["status"] == "dead" and ends["email"]["status"] == "failed"
        assert "smtp_auth_failed" in logs and "llm_unavailable" in logs
        assert f"{callback.split('?')[0]}?***" in logs  # the delivery failure names its URL
    finally:
        procs.stop()
        smtp.stop()
        llm.shutdown()
    logs = procs.logs(tail=None)
    for name, secret in PLANTED.items():
        assert secret not in logs, f"{name} leaked into a log ({log_format})"
    if log_format == "json":
        # the loop pool's delivery lines carry the delivery's id and its job's
        parsed = {}
        for _, path in procs.children:
            # Celery prints "worker: Warm shutdown" itself, unformatted, as it stops
            lines = [x for x in path.read_text().splitlines() if not x.startswith("worker: ")]
            parsed[path] = [json.loads(line) for line in lines if line.strip()]
        callbacks_log = parsed[procs.children[1][1]]  # started second
        failures = [d for d in callbacks_log if "delivery to" in d["message"]]
        assert all(d["delivery_id"] for d in failures)
        # a job's callback carries its job's id, a forwarded event its event's
        assert {d.get("job_id") for d in failures if "/cb?" in d["message"]} == {jobs["echo"]}
        assert all(d.get("event_id") for d in failures if "/fwd?" in d["message"])
