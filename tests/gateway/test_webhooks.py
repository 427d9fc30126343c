"""POST /v1/webhooks/{source} at the HTTP level: each scheme's wiring and 401 codes (signatures made
by the reference libraries where they exist), limits, dedup, ignored types, GET /v1/events/{id}.

The verifiers' own edge cases are in test_signatures.py; here each failure is driven through the
endpoint to check it comes back as the right status and code, and that nothing is recorded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import stripe
from fastapi.testclient import TestClient
from standardwebhooks.webhooks import Webhook

from gateway.main import create_app
from tests.conftest import AUTH, make_settings

STD_NEW = "whsec_" + base64.b64encode(b"inbound-standard-secret-new-0123").decode()
STD_OLD = "whsec_" + base64.b64encode(b"inbound-standard-secret-old-0123").decode()
GH_NEW, GH_OLD = "gh-inbound-secret-new", "gh-inbound-secret-old"
STRIPE_NEW, STRIPE_OLD = "whsec_stripe_inbound_new", "whsec_stripe_inbound_old"
ACME_NEW, ACME_OLD = "acme-inbound-secret-new", "acme-inbound-secret-old"
WRONG = {"std": "whsec_" + base64.b64encode(b"not-the-secret").decode()}
SECRETS = {
    "std": (STD_NEW, STD_OLD),
    "gh": (GH_NEW, GH_OLD),
    "stripe": (STRIPE_NEW, STRIPE_OLD),
    "acme": (ACME_NEW, ACME_OLD),
}
ENV = {
    "TESTHOOK_STD_NEW": STD_NEW,
    "TESTHOOK_STD_OLD": STD_OLD,
    "TESTHOOK_GH_NEW": GH_NEW,
    "TESTHOOK_GH_OLD": GH_OLD,
    "TESTHOOK_STRIPE_NEW": STRIPE_NEW,
    "TESTHOOK_STRIPE_OLD": STRIPE_OLD,
    "TESTHOOK_ACME_NEW": ACME_NEW,
    "TESTHOOK_ACME_OLD": ACME_OLD,
}
SOURCES = """
[sources.std]
scheme = "standard"
secrets_env = ["TESTHOOK_STD_NEW", "TESTHOOK_STD_OLD"]

[sources.gh]
scheme = "github"
secrets_env = ["TESTHOOK_GH_NEW", "TESTHOOK_GH_OLD"]
events = ["push", "ping"]
[[sources.gh.routes]]
events = ["push"]
forward = ["https://93.184.216.34/hooks/github"]

[sources.stripe]
scheme = "stripe"
secrets_env = ["TESTHOOK_STRIPE_NEW", "TESTHOOK_STRIPE_OLD"]
events = ["invoice.*"]

[sources.acme]
scheme = "hmac"
secrets_env = ["TESTHOOK_ACME_NEW", "TESTHOOK_ACME_OLD"]
header = "X-Acme-Signature"
algorithm = "sha512"
encoding = "base64"
prefix = "sha512="
timestamp_header = "X-Acme-Timestamp"
tolerance = 600
id_header = "X-Acme-Delivery"
event_type_path = "event.name"

[sources.plain]
scheme = "hmac"
secrets_env = ["TESTHOOK_ACME_NEW"]
header = "X-Plain-Signature"
"""
SCHEMES = ("std", "gh", "stripe", "acme")
TIMED = ("std", "stripe", "acme")
TOLERANCE = {"std": 300, "stripe": 300, "acme": 600}
SIGNATURE_HEADER = {
    "std": "webhook-signature",
    "gh": "x-hub-signature-256",
    "stripe": "stripe-signature",
    "acme": "x-acme-signature",
}
MALFORMED = {
    "std": "v1 no-comma",
    "gh": "sha1=abcd",
    "stripe": "v1=abcd",  # no t=
    "acme": "md5=abcd",  # wrong prefix
}


def event_body(msg_id: str, pad: int = 0) -> bytes:
    """A body every test source can read: id (Stripe), type, event.name (acme)."""
    return json.dumps(
        {
            "id": msg_id,
            "type": "invoice.paid",
            "event": {"name": "order.created"},
            "data": {"amount": 4200, "pad": "x" * pad},
        },
        separators=(",", ":"),
    ).encode()


def sign(
    scheme: str, secret: str, body: bytes, msg_id: str, ts: int | None = None
) -> dict[str, str]:
    """Headers a sender using ``scheme`` would send, its signature made by its reference code."""
    ts = int(time.time()) if ts is None else ts
    json_type = {"content-type": "application/json"}
    if scheme == "std":
        when = datetime.fromtimestamp(ts, tz=UTC)
        signature = Webhook(secret).sign(msg_id, when, body.decode())
        return {
            **json_type,
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": signature,
        }
    if scheme == "gh":  # GitHub publishes no library; this is its documented recipe
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return {
            **json_type,
            "x-hub-signature-256": f"sha256={digest}",
            "x-github-event": "push",
            "x-github-delivery": msg_id,
        }
    if scheme == "stripe":
        header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret, ts)
        return {**json_type, "stripe-signature": header}
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha512).digest()
    return {
        **json_type,
        "x-acme-signature": "sha512=" + base64.b64encode(mac).decode(),
        "x-acme-timestamp": str(ts),
        "x-acme-delivery": msg_id,
    }


@pytest.fixture
def sources_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES)
    return path


@pytest.fixture
def hooks(quiet_redis_url: str, prefix: str, sources_file: Path) -> Iterator[TestClient]:
    """The app with the test sources, on the quiet database (no workers consume it)."""
    redis.Redis.from_url(quiet_redis_url).flushdb()
    settings = make_settings(quiet_redis_url, prefix, webhook_sources_file=sources_file)
    with TestClient(create_app(settings)) as client:
        yield client


def post(client: TestClient, source: str, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(f"/v1/webhooks/{source}", content=body, headers=headers)


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def assert_nothing_recorded(r: redis.Redis, prefix: str) -> None:
    assert r.llen("webhooks") == 0
    assert not list(r.scan_iter(f"{prefix}event:*"))


def assert_401(response: Any, code: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == code
    for secret in (s for pair in SECRETS.values() for s in pair):
        assert secret not in response.text
        assert secret.removeprefix("whsec_") not in body["detail"]


# --- each scheme through the endpoint ------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_valid_signature_is_202_after_the_event_and_its_message_are_in_redis(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str, scheme: str
) -> None:
    msg_id = new_id()
    body = event_body(msg_id)

    response = post(hooks, scheme, body, sign(scheme, SECRETS[scheme][0], body, msg_id))

    assert response.status_code == 202, response.text
    event_id = response.json()["id"]
    assert response.json() == {"id": event_id, "status_url": f"/v1/events/{event_id}"}
    record = quiet_redis.hgetall(f"{prefix}event:{event_id}")
    assert record[b"body"] == body  # stored exactly as received
    assert record[b"status"] == b"received"
    assert record[b"source"] == scheme.encode()
    assert record[b"delivery_id"] == msg_id.encode()
    expected_type = {"gh": b"push", "acme": b"order.created"}.get(scheme, b"invoice.paid")
    assert record[b"type"] == expected_type
    [message] = quiet_redis.lrange("webhooks", 0, -1)
    envelope = json.loads(message)
    assert envelope["headers"]["task"] == "webhooks.process"
    assert json.loads(base64.b64decode(envelope["body"]))[0] == [event_id]
    assert 0 < quiet_redis.ttl(f"{prefix}event:{event_id}") <= 7 * 24 * 3600


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_rotated_secret_still_verifies(hooks: TestClient, scheme: str) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    response = post(hooks, scheme, body, sign(scheme, SECRETS[scheme][1], body, msg_id))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tampered_body_is_401_bad_signature(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str, scheme: str
) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    headers = sign(scheme, SECRETS[scheme][0], body, msg_id)
    tampered = body.replace(b"4200", b"9999")

    assert_401(post(hooks, scheme, tampered, headers), "webhook_bad_signature")
    assert_nothing_recorded(quiet_redis, prefix)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_wrong_secret_is_401_bad_signature(hooks: TestClient, scheme: str) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    wrong = WRONG.get(scheme, "whsec_not_the_secret")
    assert_401(
        post(hooks, scheme, body, sign(scheme, wrong, body, msg_id)), "webhook_bad_signature"
    )


@pytest.mark.parametrize("scheme", TIMED)
@pytest.mark.parametrize("direction", [-1, 1], ids=["stale", "future"])
def test_timestamp_outside_tolerance_is_401(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str, scheme: str, direction: int
) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    ts = int(time.time()) + direction * (TOLERANCE[scheme] + 30)
    response = post(hooks, scheme, body, sign(scheme, SECRETS[scheme][0], body, msg_id, ts))
    assert_401(response, "webhook_timestamp_out_of_tolerance")
    assert_nothing_recorded(quiet_redis, prefix)


@pytest.mark.parametrize("scheme", TIMED)
def test_timestamp_just_inside_tolerance_is_accepted(hooks: TestClient, scheme: str) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    ts = int(time.time()) - TOLERANCE[scheme] + 20
    response = post(hooks, scheme, body, sign(scheme, SECRETS[scheme][0], body, msg_id, ts))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("scheme", SCHEMES)
def test_missing_signature_header_is_401(hooks: TestClient, scheme: str) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    headers = sign(scheme, SECRETS[scheme][0], body, msg_id)
    del headers[SIGNATURE_HEADER[scheme]]
    assert_401(post(hooks, scheme, body, headers), "webhook_missing_header")


@pytest.mark.parametrize("scheme", TIMED)
def test_missing_timestamp_header_is_401(hooks: TestClient, scheme: str) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    headers = sign(scheme, SECRETS[scheme][0], body, msg_id)
    if scheme == "stripe":  # Stripe's timestamp is inside its one header
        headers["stripe-signature"] = headers["stripe-signature"].split(",", 1)[1]
        code = "webhook_malformed_header"
    else:
        del headers[{"std": "webhook-timestamp", "acme": "x-acme-timestamp"}[scheme]]
        code = "webhook_missing_header"
    assert_401(post(hooks, scheme, body, headers), code)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_malformed_signature_header_is_401(hooks: TestClient, scheme: str) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    headers = sign(scheme, SECRETS[scheme][0], body, msg_id)
    headers[SIGNATURE_HEADER[scheme]] = MALFORMED[scheme]
    assert_401(post(hooks, scheme, body, headers), "webhook_malformed_header")


def test_malformed_timestamp_is_401(hooks: TestClient) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    headers = {**sign("std", STD_NEW, body, msg_id), "webhook-timestamp": "yesterday"}
    assert_401(post(hooks, "std", body, headers), "webhook_malformed_header")


def test_stripe_event_verifies_with_the_stripe_library_too(hooks: TestClient) -> None:
    """What we accepted, Stripe's own verification accepts: the two agree on the same bytes."""
    msg_id = new_id()
    body = event_body(msg_id)
    headers = sign("stripe", STRIPE_NEW, body, msg_id)
    assert post(hooks, "stripe", body, headers).status_code == 202
    event = stripe.Webhook.construct_event(body, headers["stripe-signature"], STRIPE_NEW)
    assert event["id"] == msg_id


def test_github_form_encoded_delivery_is_accepted(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    """GitHub's `application/x-www-form-urlencoded` mode: payload=<json>, signed as sent."""
    msg_id = new_id()
    body = b"payload=" + event_body(msg_id).replace(b"{", b"%7B").replace(b"}", b"%7D")
    headers = {
        **sign("gh", GH_NEW, body, msg_id),
        "content-type": "application/x-www-form-urlencoded",
    }
    response = post(hooks, "gh", body, headers)
    assert response.status_code == 202, response.text
    record = quiet_redis.hgetall(f"{prefix}event:{response.json()['id']}")
    assert record[b"body"] == body
    assert record[b"content_type"] == b"application/x-www-form-urlencoded"


# --- limits and refusals -------------------------------------------------------------------


def test_unknown_source_is_404(hooks: TestClient) -> None:
    response = hooks.post("/v1/webhooks/nope", json={"type": "x"})
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_source"


def test_no_sources_file_means_every_source_is_unknown(client: TestClient) -> None:
    response = client.post("/v1/webhooks/github", json={"type": "x"})
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_source"


@pytest.mark.parametrize(
    ("scheme", "content_type"),
    [
        ("std", "text/plain"),
        ("std", "application/x-www-form-urlencoded"),  # form only for GitHub
        ("stripe", "application/xml"),
        ("gh", "multipart/form-data; boundary=x"),
        ("acme", ""),
    ],
)
def test_unsupported_content_type_is_415(hooks: TestClient, scheme: str, content_type: str) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    headers = {**sign(scheme, SECRETS[scheme][0], body, msg_id), "content-type": content_type}
    response = post(hooks, scheme, body, headers)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_json_with_a_suffix_and_charset_is_accepted(hooks: TestClient) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    headers = {
        **sign("std", STD_NEW, body, msg_id),
        "content-type": "application/cloudevents+json; charset=utf-8",
    }
    assert post(hooks, "std", body, headers).status_code == 202


def test_oversized_body_is_413_by_length_and_by_stream(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    msg_id = new_id()
    body = event_body(msg_id, pad=1024 * 1024)
    headers = sign("std", STD_NEW, body, msg_id)
    declared = post(hooks, "std", body, headers)

    def chunks() -> Iterator[bytes]:
        yield body[:1000]
        yield body[1000:]

    streamed = hooks.post("/v1/webhooks/std", content=chunks(), headers=headers)
    assert declared.status_code == 413 and streamed.status_code == 413
    assert streamed.json()["code"] == "payload_too_large"
    assert_nothing_recorded(quiet_redis, prefix)


def test_authentic_body_that_is_not_json_is_400(hooks: TestClient) -> None:
    body = b"{not json"
    response = post(hooks, "std", body, sign("std", STD_NEW, body, new_id()))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"


def test_authentic_event_without_a_type_is_422(hooks: TestClient) -> None:
    body = b'{"id":"evt_1","data":{}}'
    response = post(hooks, "std", body, sign("std", STD_NEW, body, new_id()))
    assert response.status_code == 422
    assert response.json()["code"] == "missing_event_type"


def test_signature_is_checked_before_the_body_is_parsed(hooks: TestClient) -> None:
    """An unauthenticated sender learns nothing about our parsing: bad JSON unsigned is a 401."""
    body = b"{not json"
    headers = sign("std", WRONG["std"], body, new_id())
    assert_401(post(hooks, "std", body, headers), "webhook_bad_signature")


# --- dedup -----------------------------------------------------------------------------------


def test_a_repeated_delivery_id_is_200_duplicate_with_the_original_id(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    first = post(hooks, "std", body, sign("std", STD_NEW, body, msg_id))
    # a retry by the sender: same id, freshly signed a few seconds later
    again = post(hooks, "std", body, sign("std", STD_NEW, body, msg_id, int(time.time()) + 2))

    assert first.status_code == 202
    assert again.status_code == 200
    original = first.json()["id"]
    assert again.json() == {
        "id": original,
        "duplicate": True,
        "status_url": f"/v1/events/{original}",
    }
    assert quiet_redis.llen("webhooks") == 1
    assert len(list(quiet_redis.scan_iter(f"{prefix}event:*"))) == 1
    ttl = quiet_redis.ttl(f"{prefix}whseen:std:id:{msg_id}")
    assert 24 * 3600 - 10 < ttl <= 24 * 3600


def test_the_same_delivery_id_at_another_source_is_not_a_duplicate(hooks: TestClient) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    assert post(hooks, "std", body, sign("std", STD_NEW, body, msg_id)).status_code == 202
    assert post(hooks, "acme", body, sign("acme", ACME_NEW, body, msg_id)).status_code == 202


def test_concurrent_duplicates_make_one_event(
    hooks: TestClient, quiet_redis: redis.Redis, prefix: str
) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    requests = [sign("std", STD_NEW, body, msg_id) for _ in range(20)]

    def send(headers: dict[str, str]) -> tuple[int, str]:
        response = post(hooks, "std", body, headers)
        return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(send, requests))

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 19 + [202]
    assert len({event_id for _, event_id in answers}) == 1
    assert quiet_redis.llen("webhooks") == 1


def test_without_a_delivery_id_the_body_hash_deduplicates(
    hooks: TestClient, quiet_redis: redis.Redis
) -> None:
    body = event_body("no-id")
    digest = hmac.new(ACME_NEW.encode(), body, hashlib.sha256).hexdigest()
    headers = {"content-type": "application/json", "x-plain-signature": digest}
    first = post(hooks, "plain", body, headers)
    again = post(hooks, "plain", body, headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert quiet_redis.llen("webhooks") == 1


# --- ignored types and the events API -----------------------------------------------------


def test_a_type_the_source_does_not_accept_is_acked_and_recorded_ignored(
    hooks: TestClient, quiet_redis: redis.Redis
) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    headers = {**sign("gh", GH_NEW, body, msg_id), "x-github-event": "issues"}

    response = post(hooks, "gh", body, headers)

    assert response.status_code == 202  # senders retry non-2xx: never bounce an authentic event
    assert quiet_redis.llen("webhooks") == 0  # nothing to process
    view = hooks.get(response.json()["status_url"], headers=AUTH).json()
    assert view["status"] == "ignored"
    assert view["type"] == "issues"
    assert view["reason"] == "event type not accepted by this source"


def test_event_view_needs_an_api_key_and_shows_the_record(hooks: TestClient) -> None:
    msg_id = new_id()
    body = event_body(msg_id)
    event_id = post(hooks, "stripe", body, sign("stripe", STRIPE_NEW, body, msg_id)).json()["id"]

    assert hooks.get(f"/v1/events/{event_id}").status_code == 401
    view = hooks.get(f"/v1/events/{event_id}", headers=AUTH).json()
    assert view["id"] == event_id
    assert view["source"] == "stripe"
    assert view["delivery_id"] == msg_id
    assert view["type"] == "invoice.paid"
    assert view["status"] == "received"
    assert view["body_bytes"] == len(body)
    assert view["body"] is None and view["jobs"] == [] and view["deliveries"] == []
    with_body = hooks.get(f"/v1/events/{event_id}?body=true", headers=AUTH).json()
    assert with_body["body"] == body.decode()


def test_unknown_event_is_404(hooks: TestClient) -> None:
    response = hooks.get("/v1/events/nope", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["code"] == "event_not_found"


def test_openapi_declares_the_answers(hooks: TestClient) -> None:
    operation = hooks.get("/openapi.json").json()["paths"]["/v1/webhooks/{source}"]["post"]
    assert {"200", "202", "401", "404", "413", "415"} <= set(operation["responses"])
