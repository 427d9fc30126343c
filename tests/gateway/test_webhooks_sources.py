"""The gateway and its sources file: a bad file stops the app at start-up, never on a request, and
each source's verifier is bound to the secrets its file names. The file's own checks are in
tests/core/test_sources.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.sources import SourcesError
from gateway.main import create_app
from gateway.webhooks.signatures import SignatureError
from handlers.signing import sign_github
from tests.conftest import make_settings

BODY = b'{"zen":"hello"}'


def test_a_missing_secret_variable_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[sources.a]\nscheme = "github"\nsecrets_env = ["S1", "NOT_SET_ANYWHERE"]\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("S1", "secret-value-one")
        with pytest.raises(SourcesError, match="NOT_SET_ANYWHERE not set"):
            create_app(make_settings("redis://127.0.0.1:1/0", "x:", webhook_sources_file=path))


def test_a_forward_to_a_blocked_address_stops_startup(tmp_path: Path) -> None:
    """Checked with the outbound guard's rules when the app starts (and again on every connect)."""
    path = tmp_path / "s.toml"
    path.write_text(
        '[sources.a]\nscheme = "github"\nsecrets_env = ["S1"]\n'
        '[[sources.a.routes]]\nevents = ["push"]\nforward = ["https://10.1.2.3/hook"]\n'
    )
    settings = make_settings("redis://127.0.0.1:1/0", "x:", webhook_sources_file=path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("S1", "secret-value-one")
        app = create_app(settings)
        with pytest.raises(SourcesError, match="url_blocked_address"), TestClient(app):
            pass


def test_each_source_verifies_with_every_secret_it_names(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[sources.a]\nscheme = "github"\nsecrets_env = ["S_NEW", "S_OLD"]\n')
    settings = make_settings("redis://127.0.0.1:1/0", "x:", webhook_sources_file=path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("S_NEW", "secret-new")
        mp.setenv("S_OLD", "secret-old")
        source = create_app(settings).state.webhook_sources["a"]
    assert "secret-" not in repr(source)
    for secret in ("secret-new", "secret-old"):
        headers = {"x-hub-signature-256": sign_github(secret, BODY)}
        assert source.verify(headers, BODY).delivery_id is None
    with pytest.raises(SignatureError) as info:
        source.verify({"x-hub-signature-256": sign_github("secret-other", BODY)}, BODY)
    assert info.value.code == "webhook_bad_signature"
