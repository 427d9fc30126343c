"""The endpoints API against real Redis, no workers: CRUD, validation, the outbound guard, secrets
shown once, rotation, paging, recovery of dead deliveries, and who may do what."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from gateway.main import create_app
from tasks.endpoints import load_all, offer
from tasks.keys import Keys
from tests.conftest import AUTH, PLAIN, make_settings

HOOK = "http://127.0.0.1:9/hook"  # an address literal: no DNS needed, allowlisted below


@pytest.fixture
def api(quiet_redis_url: str, prefix: str) -> Iterator[TestClient]:
    """The app on the quiet database; loopback http allowed, like a test receiver needs."""
    redis.Redis.from_url(quiet_redis_url).flushdb()
    settings = make_settings(
        quiet_redis_url,
        prefix,
        outbound_allow_networks=["127.0.0.1/32"],
        outbound_allow_http=True,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def create(api: TestClient, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/endpoints", json={"url": HOOK, **fields}, headers=AUTH)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_create_answers_201_with_a_secret_shown_only_then(api: TestClient) -> None:
    made = create(api, event_types=["invoice.*"], sources=["stripe"], description="billing")

    assert made["id"].startswith("ep_") and made["status"] == "enabled"
    assert made["event_types"] == ["invoice.*"] and made["sources"] == ["stripe"]
    assert made["max_in_flight"] == 32 and made["rate_limit"] is None and not made["ordered"]
    assert made["secret"].startswith("whsec_")
    assert len(base64.b64decode(made["secret"].removeprefix("whsec_"))) == 32
    shown = api.get(f"/v1/endpoints/{made['id']}", headers=AUTH).json()
    assert "secret" not in shown and shown["description"] == "billing"
    listed = api.get("/v1/endpoints", headers=AUTH).json()
    assert [item["id"] for item in listed["items"]] == [made["id"]]
    assert made["secret"] not in json.dumps(listed) and "secret" not in listed["items"][0]
    defaults = create(api)
    assert defaults["event_types"] == ["*"] and defaults["sources"] == []


def test_the_workers_read_what_the_api_wrote(
    api: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    made = create(api, rate_limit=5, max_in_flight=4, ordered=True, headers={"X-Team": "pay"})

    [endpoint] = load_all(quiet_redis, Keys(prefix))

    assert endpoint.id == made["id"] and endpoint.secret == made["secret"]
    assert endpoint.rate_limit == 5.0 and endpoint.max_in_flight == 4 and endpoint.ordered
    assert endpoint.headers == {"X-Team": "pay"} and endpoint.event_types == ("*",)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://10.0.0.1/hook", "url_blocked_address"),
        ("http://169.254.169.254/latest/meta-data", "url_blocked_address"),
        ("ftp://127.0.0.1/hook", "url_scheme_not_allowed"),
        ("not a url", "url_invalid"),
    ],
)
def test_the_outbound_guard_refuses_the_url_with_its_code(
    api: TestClient, url: str, code: str
) -> None:
    response = api.post("/v1/endpoints", json={"url": url}, headers=AUTH)

    assert response.status_code == 400
    assert response.json()["code"] == code
    assert api.get("/v1/endpoints", headers=AUTH).json()["items"] == []


@pytest.mark.parametrize(
    "fields",
    [
        {"headers": {"Content-Length": "5"}},
        {"headers": {"webhook-signature": "v1,forged"}},
        {"headers": {"Transfer-Encoding": "chunked"}},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"X-Split": "a\r\nInjected: 1"}},
        {"headers": {f"X-{n}": "v" for n in range(21)}},
        {"headers": {"X-Big": "v" * 5000}},
        {"max_in_flight": 0},
        {"max_in_flight": 1001},
        {"rate_limit": 0},
        {"event_types": []},
        {"surprise": True},
        {"description": "\ud800"},
    ],
)
def test_invalid_fields_are_422(api: TestClient, fields: dict[str, Any]) -> None:
    body = json.dumps({"url": HOOK, **fields})
    response = api.post(
        "/v1/endpoints", content=body, headers={**AUTH, "content-type": "application/json"}
    )

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"


def test_patch_changes_only_what_it_names(api: TestClient) -> None:
    made = create(api, event_types=["a.*"], rate_limit=3, description="x")

    changed = api.patch(
        f"/v1/endpoints/{made['id']}",
        json={"event_types": ["b.*"], "rate_limit": None},
        headers=AUTH,
    )

    assert changed.status_code == 200
    view = changed.json()
    assert view["event_types"] == ["b.*"] and view["rate_limit"] is None
    assert view["description"] == "x" and view["url"] == HOOK
    refused = api.patch(
        f"/v1/endpoints/{made['id']}", json={"url": "http://10.1.2.3/"}, headers=AUTH
    )
    assert refused.status_code == 400 and refused.json()["code"] == "url_blocked_address"
    nulled = api.patch(f"/v1/endpoints/{made['id']}", json={"url": None}, headers=AUTH)
    assert nulled.status_code == 422
    missing = api.patch("/v1/endpoints/ep_nope", json={"description": "y"}, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "endpoint_not_found"


def test_every_change_bumps_the_version_the_workers_watch(
    api: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    def version() -> int:
        return int(quiet_redis.get(Keys(prefix).endpoints_version) or 0)

    start = version()
    made = create(api)
    assert version() == start + 1
    api.patch(f"/v1/endpoints/{made['id']}", json={"description": "y"}, headers=AUTH)
    api.post(f"/v1/endpoints/{made['id']}/disable", headers=AUTH)
    api.post(f"/v1/endpoints/{made['id']}/rotate-secret", headers=AUTH)
    assert version() == start + 4
    assert api.delete(f"/v1/endpoints/{made['id']}", headers=AUTH).status_code == 204
    assert version() == start + 5
    assert api.get(f"/v1/endpoints/{made['id']}", headers=AUTH).status_code == 404
    assert api.delete(f"/v1/endpoints/{made['id']}", headers=AUTH).status_code == 404
    assert not quiet_redis.exists(Keys(prefix).endpoint(made["id"]))


def test_paging_walks_every_endpoint_once_oldest_first(api: TestClient) -> None:
    made = [create(api, description=str(n))["id"] for n in range(7)]

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.get("/v1/endpoints", params=params, headers=AUTH).json()
        pages += 1
        seen += [item["id"] for item in page["items"]]
        if pages == 1:  # one deleted and one added mid-walk: neither repeats nor skips the rest
            api.delete(f"/v1/endpoints/{made.pop(4)}", headers=AUTH)
            made.append(create(api)["id"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == made and pages == 3
    for bad in ("nonsense", "1:", ":ep_x", "1: x", "²:ep_x"):
        answer = api.get("/v1/endpoints", params={"cursor": bad}, headers=AUTH)
        assert answer.status_code == 422 and answer.json()["code"] == "validation_error"


def test_rotation_shows_the_new_secret_and_keeps_the_old_for_the_grace(
    api: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    made = create(api)

    rotated = api.post(f"/v1/endpoints/{made['id']}/rotate-secret", headers=AUTH)

    assert rotated.status_code == 200
    body = rotated.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != made["secret"]
    until = datetime.fromisoformat(body["previous_secret_until"])
    assert abs((until - datetime.now(UTC)) - timedelta(hours=24)) < timedelta(minutes=1)
    [endpoint] = load_all(quiet_redis, Keys(prefix))
    assert endpoint.signing_secrets() == [body["secret"], made["secret"]]
    view = api.get(f"/v1/endpoints/{made['id']}", headers=AUTH).json()
    assert view["previous_secret_until"] == body["previous_secret_until"]
    # no grace: the old secret stops signing at once
    again = api.post(
        f"/v1/endpoints/{made['id']}/rotate-secret", json={"grace_seconds": 0}, headers=AUTH
    ).json()
    [endpoint] = load_all(quiet_redis, Keys(prefix))
    assert endpoint.signing_secrets() == [again["secret"]]
    assert again["previous_secret_until"] is None
    missing = api.post("/v1/endpoints/ep_nope/rotate-secret", headers=AUTH)
    assert missing.status_code == 404


def test_disable_and_enable_flip_the_status_and_clear_the_streak(
    api: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    made = create(api)
    key = Keys(prefix).endpoint(made["id"])

    disabled = api.post(f"/v1/endpoints/{made['id']}/disable", headers=AUTH).json()
    assert disabled["status"] == "disabled"
    assert disabled["disabled_reason"] == "disabled by the operator"
    quiet_redis.hset(key, mapping={"failure_streak": 9, "failing_since": time.time() - 60})
    assert api.get(f"/v1/endpoints/{made['id']}", headers=AUTH).json()["failure_streak"] == 9

    enabled = api.post(f"/v1/endpoints/{made['id']}/enable", headers=AUTH).json()

    assert enabled["status"] == "enabled" and enabled["disabled_reason"] is None
    assert enabled["failure_streak"] == 0 and enabled["failing_since"] is None


def offered(r: redis.Redis, keys: Keys, n: int) -> list[str]:
    """Offer ``n`` events to every endpoint on record, as a worker does; the delivery ids."""
    ids: list[str] = []
    for number in range(n):
        with r.pipeline(transaction=True) as pipe:
            ids += offer(
                pipe,
                keys,
                load_all(r, keys),
                event_type="invoice.paid",
                source="stripe",
                body={"type": "invoice.paid", "n": number},
                parent=f"event:e{number}",
                owner="webhook:stripe",
                max_attempts=3,
                ttl=600,
            )
            pipe.execute()
    return ids


def test_an_endpoints_deliveries_list_newest_first_with_its_id(
    api: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    made = create(api)
    ids = offered(quiet_redis, Keys(prefix), 5)

    first = api.get(
        f"/v1/endpoints/{made['id']}/deliveries", params={"limit": 3}, headers=AUTH
    ).json()
    rest = api.get(
        f"/v1/endpoints/{made['id']}/deliveries",
        params={"cursor": first["next_cursor"]},
        headers=AUTH,
    ).json()

    listed = first["items"] + rest["items"]
    assert [item["id"] for item in listed] == ids[::-1] and rest["next_cursor"] is None
    assert {item["endpoint_id"] for item in listed} == {made["id"]}
    assert api.get(f"/v1/endpoints/{made['id']}", headers=AUTH).json()["deliveries"] == 5
    assert api.get("/v1/endpoints/ep_nope/deliveries", headers=AUTH).status_code == 404


def test_recover_replays_its_dead_deliveries_since_a_time_with_the_same_ids(
    api: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    made = create(api)
    before = datetime.now(UTC) - timedelta(seconds=5)
    dead, failed, delivered = offered(quiet_redis, keys, 3)
    for delivery_id, status in ((dead, "dead"), (failed, "failed"), (delivered, "delivered")):
        quiet_redis.hset(keys.delivery(delivery_id), "status", status)
    quiet_redis.zadd(keys.dead_letters, {f"delivery:{dead}": 1, f"delivery:{failed}": 2})

    later = api.post(
        f"/v1/endpoints/{made['id']}/recover",
        json={"since": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()},
        headers=AUTH,
    )
    assert later.json() == {"replayed": 0, "ids": []}
    answer = api.post(
        f"/v1/endpoints/{made['id']}/recover", json={"since": before.isoformat()}, headers=AUTH
    )

    assert answer.status_code == 202
    assert sorted(answer.json()["ids"]) == sorted([dead, failed])
    for delivery_id in (dead, failed):
        assert quiet_redis.hget(keys.delivery(delivery_id), "status") == b"pending"
    assert quiet_redis.hget(keys.delivery(delivered), "status") == b"delivered"
    assert quiet_redis.zcard(keys.dead_letters) == 0


def test_a_plain_key_is_403_on_operator_routes_and_still_submits_jobs(api: TestClient) -> None:
    made = create(api)
    operator_routes = [
        ("get", "/v1/endpoints"),
        ("post", "/v1/endpoints"),
        ("get", f"/v1/endpoints/{made['id']}"),
        ("delete", f"/v1/endpoints/{made['id']}"),
        ("post", f"/v1/endpoints/{made['id']}/rotate-secret"),
        ("get", "/v1/events/some-id"),
        ("get", "/v1/dead-letters"),
        ("post", "/v1/dead-letters/job:x/replay"),
        ("post", "/v1/dead-letters/replay"),
    ]
    for method, path in operator_routes:
        kwargs: dict[str, Any] = {"headers": PLAIN}
        if method == "post":
            kwargs["json"] = {"url": HOOK}
        answer = api.request(method.upper(), path, **kwargs)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.json()["code"] == "admin_required"
        unknown = api.request(method.upper(), path, headers={"Authorization": "Bearer nope"})
        assert unknown.status_code == 401
    assert api.get(f"/v1/endpoints/{made['id']}", headers=AUTH).status_code == 200  # not deleted
    job = api.post("/v1/jobs/echo", json={"message": "hi"}, headers=PLAIN)
    assert job.status_code == 202
    assert api.get(f"/v1/jobs/{job.json()['id']}", headers=PLAIN).status_code == 200
    # an admin key does what a plain key does, as a caller of its own
    assert api.get(f"/v1/jobs/{job.json()['id']}", headers=AUTH).status_code == 404
    assert api.post("/v1/jobs/echo", json={}, headers=AUTH).status_code == 202


def test_enabling_sends_what_was_held_while_disabled(
    api: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    made = create(api)
    [held] = offered(quiet_redis, keys, 1)
    quiet_redis.delete("callbacks")  # its first message went; the gate then held it
    api.post(f"/v1/endpoints/{made['id']}/disable", headers=AUTH)
    quiet_redis.zadd(keys.endpoint_limit(made["id"], "held"), {held: time.time()})

    api.post(f"/v1/endpoints/{made['id']}/enable", headers=AUTH)

    [message] = [json.loads(raw) for raw in quiet_redis.lrange("callbacks", 0, -1)]
    assert message["headers"]["id"] == held
    assert quiet_redis.zcard(keys.endpoint_limit(made["id"], "held")) == 0
