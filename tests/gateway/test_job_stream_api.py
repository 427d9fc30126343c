"""The job stream's edges in-process (a final job's stream ends, so TestClient can read it whole):
the OpenAPI entry, Redis down before a stream, and the console's session-guarded stream.
Live streams, workers and disconnects are in tests/e2e/test_job_stream.py."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from gateway.embedded import free_port
from gateway.main import create_app
from tasks.keys import Keys
from tasks.store import encode
from tests.conftest import AUTH, PLAIN, PLAIN_KEY, make_settings
from tests.gateway.test_console_security import ADMIN_KEY, assert_secured, sign_in
from tests.gateway.test_redis_down import silent_server  # noqa: F401 (a fixture)

PATH = "/v1/jobs/{job_id}/stream"


@pytest.fixture
def console_client(quiet_redis_url: str, prefix: str) -> Iterator[TestClient]:
    """The app with the console's admin key (test_console_security.py's), on the quiet database."""
    redis.Redis.from_url(quiet_redis_url).flushdb()
    settings = make_settings(quiet_redis_url, prefix, admin_api_keys=[SecretStr(ADMIN_KEY)])
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


def plant_final_job(redis_url: str, prefix: str) -> str:
    """A succeeded job owned by PLAIN_KEY, written as the worker would leave it."""
    job_id = str(uuid.uuid4())
    fields = {
        "id": job_id,
        "kind": "echo",
        "owner": hashlib.sha256(PLAIN_KEY.encode()).hexdigest()[:16],
        "status": "succeeded",
        "attempts": 1,
        "max_attempts": 3,
        "created_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:01.000Z",
        "payload": {"message": "<script>x</script>"},
        "result": {"message": "<script>x</script>", "attempt": 1},
        "progress": 100,
    }
    redis.Redis.from_url(redis_url).hset(Keys(prefix).job(job_id), mapping=encode(fields))
    return job_id


def parse(body: str) -> list[tuple[str, object]]:
    """(event, data) of each event in a whole event-stream body."""
    found = []
    for block in body.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            found.append((lines["event"], json.loads(lines["data"])))
    return found


def test_the_stream_is_documented_as_an_event_stream(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][PATH]["get"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"401", "404", "503"} <= set(operation["responses"])


def test_a_final_jobs_stream_is_its_view_then_the_end(
    client: TestClient, quiet_redis_url: str, prefix: str
) -> None:
    job_id = plant_final_job(quiet_redis_url, prefix)
    answer = client.get(f"/v1/jobs/{job_id}/stream", headers=PLAIN)
    assert answer.status_code == 200
    got = parse(answer.text)
    assert got == [("job", client.get(f"/v1/jobs/{job_id}", headers=PLAIN).json()),
                   ("end", {"status": "succeeded"})]  # fmt: skip


@pytest.mark.parametrize("kind", ["refused", "hanging"])
def test_redis_down_a_stream_is_a_quick_503(kind: str, silent_server: int) -> None:  # noqa: F811
    port = free_port() if kind == "refused" else silent_server
    settings = make_settings(f"redis://127.0.0.1:{port}/0", "gwdown:")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        started = time.monotonic()
        answer = client.get(f"/v1/jobs/{uuid.uuid4()}/stream", headers=AUTH)
        elapsed = time.monotonic() - started
        assert answer.status_code == 503, answer.text
        assert answer.json()["code"] == "redis_unavailable"
        assert answer.headers["Retry-After"] == "1"
        assert elapsed < 2.5
        # the slot it took is given back: a second try is answered the same way, not "full"
        assert client.get(f"/v1/jobs/{uuid.uuid4()}/stream", headers=AUTH).status_code == 503
        assert client.app.state.job_streams.open == 0  # type: ignore[attr-defined]


def test_the_console_stream_needs_a_session_and_follows_any_job(
    console_client: TestClient, quiet_redis_url: str, prefix: str
) -> None:
    job_id = plant_final_job(quiet_redis_url, prefix)
    path = f"/console/jobs/{job_id}/stream"
    answer = console_client.get(path, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"
    assert sign_in(console_client, ADMIN_KEY)[0] == 303
    answer = console_client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert_secured(answer)
    assert [name for name, _ in parse(answer.text)] == ["job", "end"]
    missing = console_client.get(f"/console/jobs/{uuid.uuid4()}/stream")
    assert missing.status_code == 404 and "No job" in missing.text
    assert_secured(missing)


def test_the_job_page_loads_its_script_and_names_its_live_parts(
    console_client: TestClient, quiet_redis_url: str, prefix: str
) -> None:
    job_id = plant_final_job(quiet_redis_url, prefix)
    assert sign_in(console_client, ADMIN_KEY)[0] == 303
    final = console_client.get(f"/console/jobs/{job_id}").text
    # a final job has nothing to follow: no stream opened, no script
    assert "job.js" not in final and "data-stream" not in final
    for element in ("status", "attempts", "progress", "result", "error"):
        assert f'id="{element}"' in final, element
    key = Keys(prefix).job(job_id)
    redis.Redis.from_url(quiet_redis_url).hset(key, "status", "running")
    running = console_client.get(f"/console/jobs/{job_id}").text
    assert f'data-stream="/console/jobs/{job_id}/stream"' in running
    assert "/console/static/job.js?v=" in running
    script = console_client.get("/console/static/job.js")
    assert script.status_code == 200 and "innerHTML" not in script.text.replace(
        "never innerHTML", ""
    )
