"""The console's endpoint pages in-process against real Redis: health, circuit and limits as the
records and limiter keys hold them; enable, disable, rotate and recover through the same store
the admin API uses (each a CSRF-guarded POST); the new secret shown once; markup escaped."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from tasks.keys import Keys
from tests.conftest import API_KEY, AUTH
from tests.gateway.test_console_security import XSS, assert_secured, csrf, sign_in
from tests.gateway.test_endpoints_api import HOOK, api, offered  # noqa: F401 (fixture)


@pytest.fixture
def console(api: TestClient) -> Iterator[TestClient]:  # noqa: F811
    """The app (loopback endpoints allowed), signed in as an admin."""
    assert sign_in(api, API_KEY)[0] == 303
    yield api


def create(client: TestClient, **fields: Any) -> dict[str, Any]:
    answer = client.post("/v1/endpoints", json={"url": HOOK, **fields}, headers=AUTH)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def api_view(client: TestClient, endpoint_id: str) -> dict[str, Any]:
    return dict(client.get(f"/v1/endpoints/{endpoint_id}", headers=AUTH).json())


def test_the_list_shows_health_circuit_and_limits(
    console: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    calm = create(console, rate_limit=5, max_in_flight=4)
    paused = create(console, description=XSS)
    gone = create(console)
    quiet_redis.hset(
        keys.endpoint(paused["id"]),
        mapping={
            "status": "paused",
            "failure_streak": 5,
            "last_failure_at": "2026-12-01T10:00:00Z",
        },
    )
    quiet_redis.set(keys.endpoint_limit(paused["id"], "probe"), "d1", px=20_000)
    quiet_redis.hset(
        keys.endpoint(gone["id"]),
        mapping={"status": "disabled", "disabled_reason": "410 Gone from x"},
    )
    quiet_redis.zadd(keys.endpoint_limit(gone["id"], "held"), {"d2": 1, "d3": 2})
    # one lease live, one run out (a killed worker's): only the live one is in flight
    now = time.time()
    quiet_redis.zadd(keys.endpoint_limit(calm["id"], "inflight"), {"d4": now + 60, "d5": now - 1})

    page = console.get("/console/endpoints")
    assert page.status_code == 200
    rows = dict(re.findall(r'<tr data-id="([^"]+)">(.*?)</tr>', page.text, re.S))
    assert "closed" in rows[calm["id"]] and "5.0/s, 4 at once" in rows[calm["id"]]
    assert re.search(r'class="num">1</td>\s*<td class="num">0</td>', rows[calm["id"]])
    assert re.search(r"open: next probe in (19|20) s", rows[paused["id"]])
    assert "410 Gone from x" in rows[gone["id"]] and ">disabled<" in rows[gone["id"]]
    assert re.search(r'class="num">0</td>\s*<td class="num">2</td>', rows[gone["id"]])
    assert XSS not in page.text and "&lt;script&gt;" in page.text
    assert 'href="/console/endpoints"' in page.text  # in the navigation


def test_disable_and_enable_go_through_the_store_with_csrf(console: TestClient) -> None:
    made = create(console)
    url = f"/console/endpoints/{made['id']}"
    assert console.post(f"{url}/disable", follow_redirects=False).status_code == 403
    assert api_view(console, made["id"])["status"] == "enabled"
    token = csrf(console)
    answer = console.post(f"{url}/disable", data={"csrf_token": token})
    assert answer.status_code == 200 and 'id="done"' in answer.text
    assert api_view(console, made["id"])["status"] == "disabled"
    assert api_view(console, made["id"])["disabled_reason"] == "disabled by the operator"
    assert 'id="enable"' in answer.text
    console.post(f"{url}/enable", data={"csrf_token": token})
    assert api_view(console, made["id"])["status"] == "enabled"
    missing = console.post("/console/endpoints/ep_nope/disable", data={"csrf_token": token})
    assert missing.status_code == 404


def test_a_rotated_secret_is_shown_once(
    console: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    made = create(console)
    url = f"/console/endpoints/{made['id']}"
    answer = console.post(f"{url}/rotate-secret", data={"csrf_token": csrf(console)})
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    shown = re.search(r'<pre id="secret">(whsec_[A-Za-z0-9+/=]+)</pre>', answer.text)
    assert shown and 'id="secret-warning"' in answer.text
    secret = shown.group(1)
    assert secret != made["secret"]
    assert quiet_redis.hget(Keys(prefix).endpoint(made["id"]), "secret") == secret.encode()
    # never again: not on the endpoint page, not on the list
    for path in (url, "/console/endpoints"):
        assert secret not in console.get(path).text and made["secret"] not in console.get(path).text
    assert api_view(console, made["id"])["previous_secret_until"] is not None


def test_recover_resends_failed_and_dead_deliveries_and_the_page_lists_them(
    console: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    made = create(console)
    dead, failed, delivered = offered(quiet_redis, keys, 3)
    for delivery_id, status in ((dead, "dead"), (failed, "failed"), (delivered, "delivered")):
        quiet_redis.hset(keys.delivery(delivery_id), "status", status)
    attempt = {"attempt": 1, "at": "2026-12-01T10:00:00Z", "status_code": 503, "error": XSS}
    quiet_redis.rpush(keys.delivery_attempts(dead), json.dumps(attempt))
    quiet_redis.zadd(keys.dead_letters, {f"delivery:{dead}": 1, f"delivery:{failed}": 2})

    page = console.get(f"/console/endpoints/{made['id']}").text
    rows = dict(re.findall(r'<tr data-id="([^"]+)">(.*?)</tr>', page, re.S))
    assert set(rows) == {dead, failed, delivered}
    assert ">dead<" in rows[dead] and "&lt;script&gt;" in rows[dead] and XSS not in page

    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 60))
    answer = console.post(
        f"/console/endpoints/{made['id']}/recover",
        data={"csrf_token": csrf(console), "since": since},
    )
    assert re.search(r'id="recovered-count">2<', answer.text), answer.text
    for delivery_id in (dead, failed):
        assert quiet_redis.hget(keys.delivery(delivery_id), "status") == b"pending"
    assert quiet_redis.hget(keys.delivery(delivered), "status") == b"delivered"
    again = console.post(
        f"/console/endpoints/{made['id']}/recover",
        data={"csrf_token": csrf(console), "since": since},
    )
    assert re.search(r'id="recovered-count">0<', again.text)
    assert console.get("/console/endpoints/ep_nope").status_code == 404


def test_every_endpoint_and_dead_letter_route_needs_a_session_and_posts_their_token(
    api: TestClient,  # noqa: F811
) -> None:
    routes = [
        (route.path.replace("{endpoint_id}", "ep_x").replace("{member}", "job:x"), method)
        for route in api.app.routes  # type: ignore[attr-defined]
        if isinstance(route, APIRoute)
        and route.path.startswith(("/console/endpoints", "/console/dead-letters"))
        for method in route.methods
    ]
    assert ("/console/endpoints/ep_x/rotate-secret", "POST") in routes
    assert ("/console/dead-letters/replay-range", "POST") in routes
    for path, method in routes:
        answer = api.request(method, path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in"
        assert_secured(answer)
    assert sign_in(api, API_KEY)[0] == 303
    token = csrf(api)
    for path, method in routes:
        if method != "POST":
            continue
        for sent in ({}, {"csrf_token": "forged"}, {"csrf_token": token[:-1]}):
            answer = api.post(path, data={"since": "2026-01-01T00:00", **sent})
            assert answer.status_code == 403, (path, sent)
            assert_secured(answer)
