"""Bounds on input at the API: text Redis can't store, nesting too deep, delays too far ahead.

Each is a 4xx in the error shape, never a 500, and leaves the API's Redis connection in order: the
requests after it get their own answers (a lone surrogate once crossed every later reply).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.body import MAX_JSON_DEPTH
from gateway.main import create_app
from tests.conftest import AUTH, make_settings

JSON = {**AUTH, "content-type": "application/json"}
SECRET = "bounds-inbound-secret"
MAX_DELAY = 30 * 24 * 3600


def post_raw(client: TestClient, body: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
    response = client.post("/v1/jobs/echo", content=body, headers={**JSON, **headers})
    return response.status_code, response.json()


@pytest.mark.parametrize(
    "body",
    [
        rb'{"message": "\ud800"}',
        rb'{"message": "ok\udfffok"}',
        rb'{"message": {"\ud800": 1}}',
        rb'{"message": ["\udc00\ud800"]}',
        b'{"message": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8: not UTF-8 at all
        b'{"message": "\xff"}',
        b'{"message": NaN}',
        b'{"message": Infinity}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"message": ' + b"[" * 100_000,
        b'{"message": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
        b'{"message": ' + b'{"a":' * MAX_JSON_DEPTH + b"1" + b"}" * MAX_JSON_DEPTH + b"}",
    ],
    ids=lambda body: repr(body[:24]),
)
def test_unstorable_or_too_deep_json_is_400_and_later_requests_get_their_own_answers(
    client: TestClient, body: bytes
) -> None:
    first = client.post(
        "/v1/jobs/echo", json={"message": "first"}, headers=AUTH | {"Idempotency-Key": "k1"}
    )
    assert first.status_code == 202

    status, answer = post_raw(client, body)

    assert (status, answer["code"]) == (400, "invalid_json"), answer
    again = client.post(
        "/v1/jobs/echo", json={"message": "first"}, headers=AUTH | {"Idempotency-Key": "k1"}
    )
    assert (again.status_code, again.json()["id"]) == (202, first.json()["id"])
    fresh = client.post("/v1/jobs/echo", json={"message": "fresh"}, headers=AUTH)
    assert fresh.status_code == 202
    view = client.get(fresh.json()["status_url"], headers=AUTH)
    assert view.status_code == 200 and view.json()["id"] == fresh.json()["id"]


def test_escapes_that_make_valid_text_and_the_deepest_allowed_nesting_are_accepted(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    deepest = b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1)  # the body object is 1
    for body, message in (
        (rb'{"message": "\ud83d\ude00 \u00e9"}', "😀 é"),
        (b'{"message": ' + deepest + b"}", json.loads(deepest)),
        (b'{"message": [' + b"[]," * 500 + b"[]]}", [[]] * 501),  # many brackets, shallow
    ):
        status, answer = post_raw(client, body)
        assert status == 202, answer
        stored = quiet_redis.hget(f"{prefix}job:{answer['id']}", "payload")
        assert json.loads(stored or b"") == {"message": message}


def test_an_idempotency_key_beyond_ascii_is_stored_and_replayed(client: TestClient) -> None:
    headers = {**AUTH, "Idempotency-Key": "clé-ÿ".encode("latin-1")}  # as HTTP carries it
    first = client.post("/v1/jobs/echo", json={"message": 1}, headers=headers)
    again = client.post("/v1/jobs/echo", json={"message": 1}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(
    "envelope",
    [
        b'"delay_seconds": 1e18',
        b'"delay_seconds": 1e308',
        b'"delay_seconds": 1e400',  # parsed as infinity
        b'"delay_seconds": %d' % (MAX_DELAY + 1),
        b'"run_at": "9999-12-31T23:59:59Z"',
        # two days past the limit, on a day boundary: the case is built at collection, minutes
        # before it runs, and must read the same in every test process (pytest-xdist compares)
        b'"run_at": "%b"'
        % time.strftime(
            "%Y-%m-%dT00:00:00Z", time.gmtime(time.time() + MAX_DELAY + 2 * 86400)
        ).encode(),
    ],
)
def test_a_delay_beyond_the_maximum_is_422(
    client: TestClient, quiet_redis: redis.Redis, prefix: str, envelope: bytes
) -> None:
    status, answer = post_raw(client, b'{"message": 1, ' + envelope + b"}")

    assert (status, answer["code"]) == (422, "validation_error"), answer
    assert str(MAX_DELAY) in answer["detail"]
    assert quiet_redis.zcard(f"{prefix}schedule") == 0


@pytest.mark.parametrize("envelope", [b'"delay_seconds": NaN', b'"delay_seconds": -Infinity'])
def test_non_numbers_for_a_delay_are_400(client: TestClient, envelope: bytes) -> None:
    status, answer = post_raw(client, b'{"message": 1, ' + envelope + b"}")
    assert (status, answer["code"]) == (400, "invalid_json")


def test_the_longest_delay_keeps_the_job_record_until_it_is_due_and_after(
    client: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    status, answer = post_raw(client, b'{"message": 1, "delay_seconds": %d}' % MAX_DELAY)

    assert status == 202, answer
    ttl = quiet_redis.ttl(f"{prefix}job:{answer['id']}")
    job_ttl = 7 * 24 * 3600
    assert MAX_DELAY + job_ttl - 60 <= ttl <= MAX_DELAY + job_ttl + 1
    [(_, due)] = cast(
        list[tuple[bytes, float]], quiet_redis.zrange(f"{prefix}schedule", 0, -1, withscores=True)
    )
    # the record outlives its schedule entry
    assert due + job_ttl - 60 <= time.time() + ttl


def test_max_delay_is_a_setting(quiet_redis_url: str, prefix: str) -> None:
    settings = make_settings(quiet_redis_url, prefix, max_delay_seconds=60)
    with TestClient(create_app(settings)) as small:
        assert post_raw(small, b'{"delay_seconds": 61}')[0] == 422
        assert post_raw(small, b'{"delay_seconds": 60}')[0] == 202


@pytest.fixture
def hooks(
    quiet_redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("TESTBOUNDS_SECRET", SECRET)
    sources = tmp_path / "sources.toml"
    sources.write_text(
        '[sources.plain]\nscheme = "hmac"\nsecrets_env = ["TESTBOUNDS_SECRET"]\nheader = "X-Sig"\n'
    )
    settings = make_settings(quiet_redis_url, prefix, webhook_sources_file=sources)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    "body",
    [rb'{"type": "\ud800"}', rb'{"type": "a.b", "x": "\ud800"}', b'{"type": ' + b"[" * 100_000],
    ids=["surrogate-type", "surrogate-elsewhere", "deep"],
)
def test_webhooks_with_unstorable_or_deep_json(hooks: TestClient, body: bytes) -> None:
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"content-type": "application/json", "x-sig": signature}
    response = hooks.post("/v1/webhooks/plain", content=body, headers=headers)

    if body.startswith(rb'{"type": "a.b"'):  # the raw body is kept as bytes: storable as it is
        assert response.status_code == 202, response.text
        raw = hooks.get(f"{response.json()['status_url']}?body=true", headers=AUTH)
        assert raw.json()["body"] == body.decode()
    else:
        assert (response.status_code, response.json()["code"]) == (400, "invalid_json")
    fine = b'{"type": "ok", "n": %d}' % time.time_ns()
    signature = hmac.new(SECRET.encode(), fine, hashlib.sha256).hexdigest()
    headers = {"content-type": "application/json", "x-sig": signature}
    assert hooks.post("/v1/webhooks/plain", content=fine, headers=headers).status_code == 202
