"""The console's guards, in-process against real Redis: who may sign in, what the cookie and the
headers say, CSRF on every POST, the wrong-key limit, and escaping of what callers supplied."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.settings import DEV_API_KEY
from gateway.console.web import CSP
from gateway.main import create_app
from tasks.keys import Keys
from tasks.store import encode
from tests.conftest import API_KEY, make_settings

ADMIN_KEY = "admin-key-0123456789"
XSS = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "x-content-type-options": "nosniff",
}


@pytest.fixture
def console(quiet_redis_url: str, prefix: str) -> Iterator[TestClient]:
    """The app with one submit-only key and one admin key, on the quiet database."""
    redis.Redis.from_url(quiet_redis_url).flushdb()
    settings = make_settings(quiet_redis_url, prefix, admin_api_keys=[SecretStr(ADMIN_KEY)])
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


def sign_in(client: TestClient, key: str) -> tuple[int, str]:
    """Post ``key`` through the sign-in form as a browser would; (status, page)."""
    form = client.get("/console/sign-in")
    token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
    assert token, form.text
    answer = client.post(
        "/console/sign-in",
        data={"key": key, "signin_token": token.group(1)},
        follow_redirects=False,
    )
    return answer.status_code, answer.text


def csrf(client: TestClient) -> str:
    """The session's CSRF token, from a page's sign-out form."""
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console").text)
    assert found
    return found.group(1)


def assert_secured(response: object) -> None:
    """Every console answer carries the security headers."""
    headers = response.headers  # type: ignore[attr-defined]
    for name, value in HEADERS.items():
        assert headers.get(name) == value, (name, headers.get(name))


def test_pages_need_a_session_and_every_answer_carries_the_headers(console: TestClient) -> None:
    for path in (
        "/console",
        "/console/dead-letters",
        "/console/jobs/x",
        "/console/stream/overview",
    ):
        answer = console.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"] == "/console/sign-in"
        assert_secured(answer)
    for path in ("/console/sign-in", "/console/static/console.js", "/console/no-such-page"):
        assert_secured(console.get(path))
    assert console.get("/console/no-such-page").status_code == 404
    # the API's own JSON routes are not the console's business
    assert "content-security-policy" not in console.get("/healthz").headers


def test_a_submit_only_key_cannot_sign_in_and_an_admin_key_can(
    console: TestClient, quiet_redis_url: str, prefix: str
) -> None:
    status, page = sign_in(console, API_KEY)
    assert status == 401 and "not an admin key" in page
    assert "gw_console" not in console.cookies
    assert console.get("/console", follow_redirects=False).status_code == 303

    form = console.get("/console/sign-in")
    token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
    assert token
    answer = console.post(
        "/console/sign-in",
        data={"key": ADMIN_KEY, "signin_token": token.group(1)},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("gw_console="))
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert {"httponly", "samesite=strict", "path=/console", "max-age=28800"} <= set(flags)
    assert "secure" not in flags  # plain http here; see the https test below
    assert console.get("/console").status_code == 200

    # Redis keeps the session under its id's hash, and neither the key nor the id is stored
    session_id = cookie.split(";")[0].split("=", 1)[1]
    r = redis.Redis.from_url(quiet_redis_url)
    stored = r.keys(f"{prefix}console:session:*")
    assert stored == [f"{prefix}console:session:{_sha(session_id)}".encode()]
    value = r.get(stored[0]) or b""
    assert ADMIN_KEY.encode() not in value and session_id.encode() not in value
    assert 28790 < r.ttl(stored[0]) <= 28800


def test_in_dev_with_no_keys_set_the_dev_key_signs_in(quiet_redis_url: str, prefix: str) -> None:
    settings = make_settings(quiet_redis_url, prefix, api_keys=[], admin_api_keys=[])
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        assert sign_in(client, DEV_API_KEY)[0] == 303
        assert client.get("/console").status_code == 200


def test_the_cookie_is_secure_over_https(quiet_redis_url: str, prefix: str) -> None:
    settings = make_settings(quiet_redis_url, prefix, admin_api_keys=[SecretStr(ADMIN_KEY)])
    with TestClient(create_app(settings), base_url="https://127.0.0.1") as client:
        form = client.get("/console/sign-in")
        token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
        assert token
        answer = client.post(
            "/console/sign-in",
            data={"key": ADMIN_KEY, "signin_token": token.group(1)},
            follow_redirects=False,
        )
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("gw_console="))
    assert "secure" in [part.strip().lower() for part in cookie.split(";")]


def test_every_post_needs_its_csrf_token(console: TestClient) -> None:
    assert sign_in(console, ADMIN_KEY)[0] == 303
    token = csrf(console)
    for path, data in (
        ("/console/sign-out", {}),
        ("/console/dead-letters/replay", {"ids": "job:x"}),
        ("/console/dead-letters/confirm", {"selected": "job:x"}),
    ):
        for sent in ({}, {"csrf_token": "forged"}, {"csrf_token": token[:-1]}):
            answer = console.post(path, data=data | sent, follow_redirects=False)
            assert answer.status_code == 403, (path, sent)
            assert_secured(answer)
    assert console.get("/console").status_code == 200  # still signed in

    # the sign-in form without its cookie's token
    answer = console.post("/console/sign-in", data={"key": ADMIN_KEY, "signin_token": "forged"})
    assert answer.status_code == 403

    answer = console.post("/console/sign-out", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"
    assert console.get("/console", follow_redirects=False).status_code == 303


def test_a_signed_out_session_cookie_opens_nothing(console: TestClient) -> None:
    assert sign_in(console, ADMIN_KEY)[0] == 303
    session_id = console.cookies["gw_console"]
    console.post("/console/sign-out", data={"csrf_token": csrf(console)})
    console.cookies.set("gw_console", session_id, path="/console")
    assert console.get("/console", follow_redirects=False).status_code == 303


def test_a_session_ends_when_its_key_is_no_longer_an_admin_key(
    console: TestClient, quiet_redis_url: str, prefix: str
) -> None:
    assert sign_in(console, ADMIN_KEY)[0] == 303
    session_id = console.cookies["gw_console"]
    # the gateway restarted with the key taken out of ADMIN_API_KEYS
    settings = make_settings(quiet_redis_url, prefix, admin_api_keys=[SecretStr("another-key")])
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as restarted:
        restarted.cookies.set("gw_console", session_id, path="/console")
        assert restarted.get("/console", follow_redirects=False).status_code == 303


def test_wrong_keys_are_limited_per_address(console: TestClient) -> None:
    for _ in range(5):
        assert sign_in(console, "wrong-key")[0] == 401
    # the sixth try is refused whatever it holds, the right key included
    form = console.get("/console/sign-in")
    token = re.search(r'name="signin_token" value="([^"]+)"', form.text)
    assert token
    answer = console.post(
        "/console/sign-in", data={"key": ADMIN_KEY, "signin_token": token.group(1)}
    )
    assert answer.status_code == 429
    assert 0 < int(answer.headers["retry-after"]) <= 60
    assert_secured(answer)
    assert "gw_console" not in console.cookies


def test_right_keys_do_not_use_up_the_limit(console: TestClient, quiet_redis_url: str) -> None:
    for _ in range(8):
        assert sign_in(console, ADMIN_KEY)[0] == 303
        console.cookies.clear()
    assert sign_in(console, "wrong-key")[0] == 401
    r = redis.Redis.from_url(quiet_redis_url)
    (key,) = r.keys("*console:signin-attempts:*")
    assert r.get(key) == b"1" and 0 < r.ttl(key) <= 60


def test_what_callers_supplied_is_escaped(
    console: TestClient, quiet_redis_url: str, prefix: str
) -> None:
    job_id = plant_dead_job(quiet_redis_url, prefix)
    assert sign_in(console, ADMIN_KEY)[0] == 303
    for path in (
        f"/console/jobs/{job_id}",
        f"/console/dead-letters/job:{job_id}",
        "/console/dead-letters",
    ):
        page = console.get(path)
        assert page.status_code == 200, path
        assert "<script>window" not in page.text and "<img src=x" not in page.text, path
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page.text, path


def test_replay_from_the_console_queues_the_job(
    console: TestClient, quiet_redis_url: str, prefix: str
) -> None:
    job_id = plant_dead_job(quiet_redis_url, prefix)
    assert sign_in(console, ADMIN_KEY)[0] == 303
    token = csrf(console)
    confirm = console.post(
        "/console/dead-letters/confirm", data={"csrf_token": token, "selected": f"job:{job_id}"}
    )
    assert confirm.status_code == 200 and f"job:{job_id}" in confirm.text
    done = console.post(
        "/console/dead-letters/replay", data={"csrf_token": token, "ids": f"job:{job_id}"}
    )
    assert done.status_code == 200
    assert re.search(rf'data-id="job:{job_id}">.*?class="outcome">queued<', done.text, re.S)
    r = redis.Redis.from_url(quiet_redis_url)
    assert r.hget(Keys(prefix).job(job_id), "status") == b"queued"
    assert any(job_id.encode() in message for message in r.lrange("default", 0, -1))
    # a second replay of the same dead letter does nothing, and says so
    again = console.post(
        "/console/dead-letters/replay", data={"csrf_token": token, "ids": f"job:{job_id}"}
    )
    assert "no longer a dead letter" in again.text


def plant_dead_job(redis_url: str, prefix: str) -> str:
    """A failed echo job whose payload and error hold markup, listed as a dead letter."""
    keys = Keys(prefix)
    job_id = f"xss{int(time.time() * 1000)}"
    record = {
        "id": job_id,
        "kind": "echo",
        "owner": "someone",
        "status": "failed",
        "attempts": 1,
        "max_attempts": 5,
        "payload": {"message": XSS},
        "error": {"code": "echo_failed", "detail": XSS},
        "created_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:00:01.000Z",
    }
    r = redis.Redis.from_url(redis_url)
    r.hset(keys.job(job_id), mapping=encode(record))
    r.zadd(keys.dead_letters, {f"job:{job_id}": time.time()})
    r.hincrby(keys.dead_letter_counts, "echo", 1)
    r.close()
    return job_id


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
