"""Inbound signature verification, checked against each scheme's reference library if it has one."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import stripe
from standardwebhooks.webhooks import Webhook

from gateway.webhooks.signatures import (
    SignatureError,
    Verified,
    verify_github,
    verify_hmac,
    verify_standard,
    verify_stripe,
)
from handlers.signing import (
    hmac_base64,
    hmac_digest,
    hmac_hex,
    sign_github,
    sign_standard,
    sign_stripe,
    standard_webhooks_key,
)

NOW = 1_700_000_000
BODY = b'{"id":"evt_123","type":"invoice.paid","amount":4200}'
STD_SECRET = "whsec_" + base64.b64encode(b"standard-secret-one-32-bytes-key").decode()
STD_OTHER = "whsec_" + base64.b64encode(b"standard-secret-two-32-bytes-key").decode()
STRIPE_SECRET = "whsec_stripe_secret_one"
STRIPE_OTHER = "whsec_stripe_secret_two"
PLAIN_SECRET = "plain-secret-one"
PLAIN_OTHER = "plain-secret-two"
ALL_SECRETS = (STD_SECRET, STD_OTHER, STRIPE_SECRET, STRIPE_OTHER, PLAIN_SECRET, PLAIN_OTHER)


def rejected(code: str, call: Callable[[], Verified]) -> SignatureError:
    """Assert the call fails with `code` and that no secret material leaks into the error."""
    with pytest.raises(SignatureError) as info:
        call()
    err = info.value
    assert err.code == code, err.detail
    assert err.status == 401  # an ApiError: the API answers it as it is
    for secret in ALL_SECRETS:
        for material in (secret, secret.removeprefix("whsec_")):
            assert material not in str(err)
            assert material not in err.detail
            assert material not in repr(err)
    return err


# --- Standard Webhooks -------------------------------------------------------------------------


def std_headers(
    body: bytes = BODY, secret: str = STD_SECRET, ts: int = NOW, msg_id: str = "msg_1"
) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_standard_accepts_reference_library_signature() -> None:
    verified = verify_standard(std_headers(), BODY, [STD_SECRET], now=NOW)
    assert verified == Verified(delivery_id="msg_1", timestamp=NOW)


def test_standard_sign_matches_reference_library_both_ways() -> None:
    ts = int(time.time())  # the reference verify() reads the real clock
    ours = sign_standard(standard_webhooks_key(STD_SECRET), "msg_2", ts, BODY)
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(ts), "webhook-signature": ours}
    assert Webhook(STD_SECRET).verify(BODY, headers) == {
        "id": "evt_123",
        "type": "invoice.paid",
        "amount": 4200,
    }
    assert ours == std_headers(ts=ts, msg_id="msg_2")["webhook-signature"]


def test_standard_key_accepts_secret_without_prefix_and_unpadded() -> None:
    bare = STD_SECRET.removeprefix("whsec_")
    assert standard_webhooks_key(bare) == standard_webhooks_key(STD_SECRET)
    assert standard_webhooks_key("whsec_" + bare.rstrip("=")) == standard_webhooks_key(bare)
    assert verify_standard(std_headers(), BODY, [bare], now=NOW).delivery_id == "msg_1"


def test_standard_rejects_tampered_body() -> None:
    rejected(
        "webhook_bad_signature",
        lambda: verify_standard(std_headers(), BODY + b" ", [STD_SECRET], now=NOW),
    )


def test_standard_rejects_wrong_secret() -> None:
    rejected(
        "webhook_bad_signature", lambda: verify_standard(std_headers(), BODY, [STD_OTHER], now=NOW)
    )


def test_standard_accepts_rotated_secret() -> None:
    headers = std_headers(secret=STD_OTHER)
    assert verify_standard(headers, BODY, [STD_SECRET, STD_OTHER], now=NOW).timestamp == NOW


@pytest.mark.parametrize("signer", [STD_SECRET, STD_OTHER], ids=["first", "second"])
def test_standard_match_counts_wherever_it_is_among_secrets_and_signatures(signer: str) -> None:
    headers = std_headers(secret=signer)
    wrong = std_headers(secret="whsec_" + base64.b64encode(b"x" * 32).decode())
    headers["webhook-signature"] += " " + wrong["webhook-signature"]
    assert verify_standard(headers, BODY, [STD_SECRET, STD_OTHER], now=NOW)


def test_standard_accepts_any_of_several_signatures_and_ignores_other_versions() -> None:
    headers = std_headers()
    wrong = std_headers(secret=STD_OTHER)["webhook-signature"]
    headers["webhook-signature"] = f"v1a,bm90LWNoZWNrZWQ= {wrong} {headers['webhook-signature']}"
    assert verify_standard(headers, BODY, [STD_SECRET], now=NOW).delivery_id == "msg_1"


@pytest.mark.parametrize("offset", [-300, 300])
def test_standard_accepts_timestamp_at_tolerance_edge(offset: int) -> None:
    assert verify_standard(std_headers(ts=NOW + offset), BODY, [STD_SECRET], now=NOW)


@pytest.mark.parametrize("offset", [-301, 301], ids=["stale", "future"])
def test_standard_rejects_timestamp_outside_tolerance(offset: int) -> None:
    headers = std_headers(ts=NOW + offset)
    err = rejected(
        "webhook_timestamp_out_of_tolerance",
        lambda: verify_standard(headers, BODY, [STD_SECRET], now=NOW),
    )
    assert "webhook-timestamp" in err.detail


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_standard_rejects_missing_header(missing: str) -> None:
    headers = std_headers()
    del headers[missing]
    err = rejected(
        "webhook_missing_header", lambda: verify_standard(headers, BODY, [STD_SECRET], now=NOW)
    )
    assert missing in err.detail


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("webhook-timestamp", "1700000000.5"),
        ("webhook-timestamp", "soon"),
        ("webhook-timestamp", "-1700000000"),
        ("webhook-signature", "v1"),
        ("webhook-signature", "v1,not*base64"),
        ("webhook-signature", "v2,c2lnbmF0dXJl"),
    ],
)
def test_standard_rejects_malformed_header(header: str, value: str) -> None:
    headers = std_headers() | {header: value}
    err = rejected(
        "webhook_malformed_header", lambda: verify_standard(headers, BODY, [STD_SECRET], now=NOW)
    )
    assert header in err.detail


def test_standard_check_order_missing_malformed_tolerance_signature() -> None:
    bad = {"webhook-timestamp": "x", "webhook-signature": "v1,AAAA"}
    rejected("webhook_missing_header", lambda: verify_standard(bad, BODY, [STD_SECRET], now=NOW))
    bad |= {"webhook-id": "msg_1"}
    rejected("webhook_malformed_header", lambda: verify_standard(bad, BODY, [STD_SECRET], now=NOW))
    bad |= {"webhook-timestamp": str(NOW - 3600)}
    rejected(
        "webhook_timestamp_out_of_tolerance",
        lambda: verify_standard(bad, BODY, [STD_SECRET], now=NOW),
    )


def test_standard_secret_misconfiguration_is_not_a_sender_error() -> None:
    with pytest.raises(ValueError) as info:
        verify_standard(std_headers(), BODY, ["whsec_not*base64!"], now=NOW)
    assert "not*base64" not in str(info.value)
    with pytest.raises(ValueError):
        verify_standard(std_headers(), BODY, [], now=NOW)


# --- GitHub ------------------------------------------------------------------------------------


def test_github_published_test_vector() -> None:
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign_github(secret, body) == "sha256=" + expected
    headers = {"X-Hub-Signature-256": "sha256=" + expected, "X-GitHub-Delivery": "d-1"}
    assert verify_github(headers, body, [secret]) == Verified(delivery_id="d-1", timestamp=None)


def gh_headers(body: bytes = BODY, secret: str = PLAIN_SECRET) -> dict[str, str]:
    return {"x-hub-signature-256": sign_github(secret, body), "x-github-delivery": "gh-1"}


def test_github_accepts_valid_and_rotated_secret() -> None:
    assert verify_github(gh_headers(), BODY, [PLAIN_SECRET]).delivery_id == "gh-1"
    assert verify_github(gh_headers(secret=PLAIN_OTHER), BODY, [PLAIN_SECRET, PLAIN_OTHER])


def test_github_delivery_id_is_optional() -> None:
    headers = {"x-hub-signature-256": sign_github(PLAIN_SECRET, BODY)}
    assert verify_github(headers, BODY, [PLAIN_SECRET]).delivery_id is None


def test_github_rejects_tampered_body_and_wrong_secret() -> None:
    rejected(
        "webhook_bad_signature", lambda: verify_github(gh_headers(), BODY[:-1], [PLAIN_SECRET])
    )
    rejected("webhook_bad_signature", lambda: verify_github(gh_headers(), BODY, [PLAIN_OTHER]))


def test_github_rejects_missing_header() -> None:
    err = rejected("webhook_missing_header", lambda: verify_github({}, BODY, [PLAIN_SECRET]))
    assert "x-hub-signature-256" in err.detail


@pytest.mark.parametrize(
    "value",
    ["757107ea0eb2", "sha1=757107ea0eb2", "sha256=zz", "sha256=757 107", "sha256=", "sha256=abc"],
)
def test_github_rejects_malformed_header(value: str) -> None:
    headers = {"x-hub-signature-256": value}
    rejected("webhook_malformed_header", lambda: verify_github(headers, BODY, [PLAIN_SECRET]))


# --- Stripe ------------------------------------------------------------------------------------


def stripe_oracle(
    header: str, body: bytes, secrets: list[str], tolerance: int | None = 300
) -> bool:
    """Stripe's own verdict: does any secret verify the header (None: no tolerance check)?"""
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, tolerance=tolerance)
        except stripe.SignatureVerificationError:
            continue
        return True
    return False


def test_stripe_sign_matches_reference_library() -> None:
    expected = stripe.WebhookSignature.generate_signature_header(BODY.decode(), STRIPE_SECRET, NOW)
    assert sign_stripe(STRIPE_SECRET, NOW, BODY) == expected
    compute = stripe.WebhookSignature._compute_signature
    assert expected.endswith("v1=" + compute(f"{NOW}.{BODY.decode()}", STRIPE_SECRET))


@pytest.mark.parametrize(
    ("case", "sign_with", "body", "verify_with", "age", "code"),
    [
        ("valid", STRIPE_SECRET, BODY, [STRIPE_SECRET], 0, None),
        ("rotated", STRIPE_OTHER, BODY, [STRIPE_SECRET, STRIPE_OTHER], 0, None),
        ("tampered", STRIPE_SECRET, BODY + b"\n", [STRIPE_SECRET], 0, "webhook_bad_signature"),
        ("wrong", STRIPE_OTHER, BODY, [STRIPE_SECRET], 0, "webhook_bad_signature"),
        ("stale", STRIPE_SECRET, BODY, [STRIPE_SECRET], 301, "webhook_timestamp_out_of_tolerance"),
    ],
)
def test_stripe_verdicts_agree_with_reference_library(
    case: str, sign_with: str, body: bytes, verify_with: list[str], age: int, code: str | None
) -> None:
    now = time.time()  # stripe's verify_header reads the real clock
    ts = int(now) - age
    header = stripe.WebhookSignature.generate_signature_header(BODY.decode(), sign_with, ts)
    headers = {"Stripe-Signature": header}
    assert stripe_oracle(header, body, verify_with) is (code is None)
    if code is None:
        assert verify_stripe(headers, body, verify_with, now=now) == Verified("evt_123", ts)
    else:
        rejected(code, lambda: verify_stripe(headers, body, verify_with, now=now))


def test_stripe_rejects_future_timestamp_where_reference_library_does_not() -> None:
    # Deliberate: stripe-python only rejects stale timestamps; we bound both directions, as
    # Standard Webhooks does, so a captured future-dated delivery cannot be replayed for longer.
    now = time.time()
    header = sign_stripe(STRIPE_SECRET, int(now) + 301, BODY)
    assert stripe_oracle(header, BODY, [STRIPE_SECRET])
    rejected(
        "webhook_timestamp_out_of_tolerance",
        lambda: verify_stripe({"stripe-signature": header}, BODY, [STRIPE_SECRET], now=now),
    )


def test_stripe_ignores_other_schemes_and_accepts_any_v1() -> None:
    now = time.time()
    good = sign_stripe(STRIPE_SECRET, int(now), BODY).split(",")[1]
    wrong = sign_stripe(STRIPE_OTHER, int(now), BODY).split(",")[1]
    header = f"t={int(now)},v0=deadbeef,{wrong},{good}"
    assert stripe_oracle(header, BODY, [STRIPE_SECRET])
    headers = {"stripe-signature": header}
    assert verify_stripe(headers, BODY, [STRIPE_SECRET], now=now).delivery_id == "evt_123"


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"id": 5}', b"\xff\xfe"])
def test_stripe_signed_body_without_event_id_has_no_delivery_id(body: bytes) -> None:
    headers = {"stripe-signature": sign_stripe(STRIPE_SECRET, NOW, body)}
    assert verify_stripe(headers, body, [STRIPE_SECRET], now=NOW) == Verified(None, NOW)


def test_stripe_rejects_missing_header() -> None:
    err = rejected(
        "webhook_missing_header", lambda: verify_stripe({}, BODY, [STRIPE_SECRET], now=NOW)
    )
    assert "stripe-signature" in err.detail


@pytest.mark.parametrize(
    "value",
    [
        "v1=" + "ab" * 32,  # no timestamp
        f"t={NOW}",  # no v1 signature
        f"t={NOW},v0=" + "ab" * 32,  # only a scheme we do not check
        f"t={NOW}.5,v1=" + "ab" * 32,  # non-integer timestamp
        f"t={NOW},t={NOW},v1=" + "ab" * 32,  # ambiguous timestamp
        f"t={NOW},v1=xyz",  # signature not hex
        f"t={NOW},garbage",  # item without '='
    ],
)
def test_stripe_rejects_malformed_header(value: str) -> None:
    headers = {"stripe-signature": value}
    rejected(
        "webhook_malformed_header", lambda: verify_stripe(headers, BODY, [STRIPE_SECRET], now=NOW)
    )
    assert not stripe_oracle(value, BODY, [STRIPE_SECRET], tolerance=None)


# --- Generic HMAC ------------------------------------------------------------------------------


def test_generic_hex_sha256_with_id_header_and_mixed_case_keys() -> None:
    headers = {"X-Signature": hmac_hex(PLAIN_SECRET.encode(), BODY), "X-Request-Id": "r-1"}
    verified = verify_hmac(
        headers, BODY, [PLAIN_SECRET], header="X-Signature", id_header="X-Request-Id"
    )
    assert verified == Verified(delivery_id="r-1", timestamp=None)


def sha512_b64_headers(
    secret: str = PLAIN_SECRET, ts: int = NOW, body: bytes = BODY
) -> dict[str, str]:
    signature = hmac_base64(secret.encode(), f"{ts}.".encode() + body, "sha512")
    return {"x-sig": "sha512=" + signature, "x-ts": str(ts)}


def verify_sha512(
    headers: dict[str, str], body: bytes = BODY, secrets: tuple[str, ...] = (PLAIN_SECRET,)
) -> Verified:
    return verify_hmac(
        headers, body, secrets, header="x-sig", algorithm="sha512", encoding="base64",
        prefix="sha512=", timestamp_header="X-Ts", tolerance=60, now=NOW,
    )  # fmt: skip


def test_generic_sha512_base64_prefix_and_timestamp() -> None:
    assert verify_sha512(sha512_b64_headers()) == Verified(delivery_id=None, timestamp=NOW)
    assert verify_sha512(sha512_b64_headers(PLAIN_OTHER), secrets=(PLAIN_SECRET, PLAIN_OTHER))


def test_generic_rejects_tampered_body_and_wrong_secret() -> None:
    rejected("webhook_bad_signature", lambda: verify_sha512(sha512_b64_headers(), body=b"{}"))
    rejected("webhook_bad_signature", lambda: verify_sha512(sha512_b64_headers(PLAIN_OTHER)))


@pytest.mark.parametrize("offset", [-61, 61], ids=["stale", "future"])
def test_generic_rejects_timestamp_outside_tolerance(offset: int) -> None:
    headers = sha512_b64_headers(ts=NOW + offset)
    rejected("webhook_timestamp_out_of_tolerance", lambda: verify_sha512(headers))


@pytest.mark.parametrize("missing", ["x-sig", "x-ts"])
def test_generic_rejects_missing_header(missing: str) -> None:
    headers = sha512_b64_headers()
    del headers[missing]
    err = rejected("webhook_missing_header", lambda: verify_sha512(headers))
    assert missing in err.detail


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-sig", "c2lnbmF0dXJl"),
        ("x-sig", "sha512=not base64!"),
        ("x-sig", "sha512="),
        ("x-ts", "12:00"),
    ],
)
def test_generic_rejects_malformed_header(header: str, value: str) -> None:
    headers = sha512_b64_headers() | {header: value}
    rejected("webhook_malformed_header", lambda: verify_sha512(headers))


def test_generic_rejects_non_hex_and_refuses_tolerance_without_timestamp() -> None:
    headers = {"x-sig": "not-hex"}
    rejected(
        "webhook_malformed_header",
        lambda: verify_hmac(headers, BODY, [PLAIN_SECRET], header="x-sig"),
    )
    with pytest.raises(ValueError):
        verify_hmac(headers, BODY, [PLAIN_SECRET], header="x-sig", tolerance=300)


def test_hmac_helpers_refuse_unknown_algorithm() -> None:
    assert hmac_digest(b"k", b"m", "sha512") != hmac_digest(b"k", b"m")
    with pytest.raises(ValueError):
        hmac_digest(b"k", b"m", "md5")  # type: ignore[arg-type]
