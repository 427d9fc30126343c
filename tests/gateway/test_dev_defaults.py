"""Dev defaults that match the README: the documented key when API_KEYS is unset, no SMTP relay
assumed, dev mode only on loopback; production keeps refusing to start without real keys."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from core.settings import DEV_API_KEY, Settings, get_settings
from gateway.dev import check_bind
from tests.conftest import ROOT

DEV_KEY_HASH = hashlib.sha256(DEV_API_KEY.encode()).hexdigest()


def build(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in ("API_KEYS", "ADMIN_API_KEYS", "ENVIRONMENT", "SMTP_HOST", "ALLOW_DEV_ON_PUBLIC"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return Settings(_env_file=None)  # type: ignore[call-arg]
    finally:
        get_settings.cache_clear()


def test_dev_without_api_keys_accepts_the_documented_key(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = build(monkeypatch, ENVIRONMENT="dev")
    assert settings.api_key_hashes() == (DEV_KEY_HASH,)
    assert settings.accepts_dev_api_key


def test_dev_with_api_keys_accepts_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = build(monkeypatch, ENVIRONMENT="dev", API_KEYS="my-own-key-123")
    assert DEV_KEY_HASH not in settings.api_key_hashes()
    assert not settings.accepts_dev_api_key


def test_in_dev_the_dev_key_is_an_admin_key_unless_admin_keys_are_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert build(monkeypatch, ENVIRONMENT="dev").admin_key_hashes() == (DEV_KEY_HASH,)
    own = build(monkeypatch, ENVIRONMENT="dev", API_KEYS="my-own-key-123")
    assert own.admin_key_hashes() == ()  # the dev key is not accepted at all
    chosen = build(monkeypatch, ENVIRONMENT="dev", ADMIN_API_KEYS="my-admin-key-123")
    admin_hash = hashlib.sha256(b"my-admin-key-123").hexdigest()
    assert chosen.admin_key_hashes() == (admin_hash,)
    # an admin key is an API key too; the dev key stays a plain one
    assert set(chosen.api_key_hashes()) == {DEV_KEY_HASH, admin_hash}


def test_production_refuses_a_placeholder_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="ADMIN_API_KEYS holds a placeholder"):
        build(
            monkeypatch,
            ENVIRONMENT="production",
            API_KEYS="a-real-key-0123456789",
            ADMIN_API_KEYS=DEV_API_KEY,
            SIGNING_SECRETS="whsec_" + "QUJD" * 8,
        )


def test_production_without_api_keys_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="API_KEYS is empty"):
        build(monkeypatch, ENVIRONMENT="production", SIGNING_SECRETS="whsec_" + "QUJD" * 8)


def test_production_refuses_the_dev_key_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="API_KEYS holds a placeholder"):
        build(
            monkeypatch,
            ENVIRONMENT="production",
            API_KEYS=DEV_API_KEY,
            SIGNING_SECRETS="whsec_" + "QUJD" * 8,
        )


def test_smtp_host_is_unset_by_default_and_in_the_example_env() -> None:
    assert Settings(_env_file=None).smtp_host is None  # type: ignore[call-arg]
    assert Settings(_env_file=ROOT / ".env.example").smtp_host is None  # type: ignore[call-arg]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_dev_mode_serves_loopback(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    check_bind(build(monkeypatch), host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.example.com"])
def test_dev_mode_refuses_other_addresses(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    with pytest.raises(SystemExit, match="ALLOW_DEV_ON_PUBLIC"):
        check_bind(build(monkeypatch), host)
    check_bind(build(monkeypatch, ALLOW_DEV_ON_PUBLIC="true"), host)


def gateway(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `gateway` command with ``env`` over a clean dev environment."""
    base = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "SMTP_HOST")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env={**base, "ENVIRONMENT": "dev", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_api_refuses_dev_mode_on_every_interface_before_binding() -> None:
    done = gateway("api", "--host", "0.0.0.0", "--port", "1")
    assert done.returncode != 0
    assert "refusing to serve dev mode on 0.0.0.0" in done.stderr


def test_an_email_worker_without_smtp_host_says_how_to_get_one() -> None:
    done = gateway("worker", "email", REDIS_URL="redis://127.0.0.1:1/0")
    assert done.returncode != 0
    assert "SMTP_HOST is unset" in done.stderr and "gateway dev" in done.stderr
