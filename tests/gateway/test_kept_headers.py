"""What an event keeps of its request headers: credentials masked by name and by value."""

from __future__ import annotations

from core.logs import MASK
from gateway.webhooks.kept_headers import kept_headers, masked

SECRET = "source-secret-0123456789"


def test_credentials_are_masked_by_name_and_by_value() -> None:
    kept = kept_headers(
        [
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer abc"),
            ("Cookie", "a=1"),
            ("X-Hub-Signature-256", "sha256=00ff"),
            ("X-Shop-Hmac", "00ff"),  # the source's configured signature header
            ("X-Api-Key", "k"),
            ("X-Debug", f"was {SECRET}"),
            ("X-Callback", "https://user:pw@example.com/cb?token=t"),
            ("Accept", "text/plain"),
            ("Accept", "application/json"),  # repeated: joined as HTTP allows
        ],
        (SECRET,),
        "X-Shop-Hmac",
    )
    assert kept == {
        "content-type": "application/json",
        "authorization": MASK,
        "cookie": MASK,
        "x-hub-signature-256": MASK,
        "x-shop-hmac": MASK,
        "x-api-key": MASK,
        "x-debug": f"was {MASK}",
        "x-callback": f"https://example.com/cb?{MASK}",
        "accept": "text/plain, application/json",
    }


def test_shown_headers_are_masked_again_with_todays_secrets() -> None:
    stored = {"x-note": f"old {SECRET}", "webhook-signature": "v1,abc", "host": "h"}
    assert masked(stored, [SECRET]) == {
        "x-note": f"old {MASK}",
        "webhook-signature": MASK,
        "host": "h",
    }
