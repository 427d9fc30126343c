"""Settings: one class, from the environment; placeholders refused outside dev; secrets unechoed."""

from __future__ import annotations

import hashlib

import pytest

from core.settings import Settings, get_settings


def build(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return get_settings()
    finally:
        get_settings.cache_clear()


def test_example_env_file_is_valid_in_dev() -> None:
    settings = Settings(_env_file=".env.example")  # type: ignore[call-arg]
    assert settings.environment == "dev"
    assert settings.api_key_hashes() == (hashlib.sha256(b"change-me-dev-key").hexdigest(),)
    assert settings.webhook_sources_file is None  # empty values mean unset


def test_production_refuses_placeholders_without_echoing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SystemExit) as exc:
        build(monkeypatch, ENVIRONMENT="production", API_KEYS="change-me-please")
    assert "API_KEYS holds a placeholder" in str(exc.value)
    assert "change-me-please" not in str(exc.value)


def test_production_refuses_a_placeholder_signing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="SIGNING_SECRETS"):
        build(
            monkeypatch,
            ENVIRONMENT="production",
            API_KEYS="k-" + "7" * 30,
            SIGNING_SECRETS="whsec_Y2hhbmdlLW1lLWRldi1zaWduaW5nLXNlY3JldA==",
        )


def test_production_accepts_real_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    key = "prod-key-" + "x" * 24
    settings = build(
        monkeypatch,
        ENVIRONMENT="production",
        API_KEYS=f"{key}, sha256:{'ab' * 32}",
        SIGNING_SECRETS="whsec_cmVhbC1zZWNyZXQtMDEyMzQ1Njc4OQ==",
    )
    assert settings.api_key_hashes() == (hashlib.sha256(key.encode()).hexdigest(), "ab" * 32)
    assert key not in repr(settings)


def test_visibility_timeout_must_exceed_the_longest_task(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit, match="VISIBILITY_TIMEOUT_SECONDS"):
        build(monkeypatch, VISIBILITY_TIMEOUT_SECONDS="60", FILES_TASK_TIME_LIMIT_SECONDS="3600")
