"""The email, llm and file kinds validate at the API: 422 naming the field, 202 when valid."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import AUTH


@pytest.mark.parametrize(
    ("kind", "body", "field"),
    [
        ("email", {"to": ["not-an-address"], "subject": "s", "text": "t"}, "to.0"),
        ("email", {"to": "a@example.com", "subject": "s"}, "html"),
        ("email", {"to": "a@example.com", "text": "t", "headers": {"Bcc": "x@y.z"}}, "headers"),
        ("llm", {"model": "m"}, "messages"),
        ("llm", {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ("llm", {"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
        (
            "file",
            {"source": {"file_id": "f_" + "a" * 22}, "operations": [{"name": "explode"}]},
            "operations.0.name",
        ),
        (
            "file",
            {
                "source": {"file_id": "f_" + "a" * 22},
                "operations": [{"name": "thumbnail", "params": {"width": 0, "height": 5}}],
            },
            "operations.0.params.width",
        ),
        ("file", {"source": {}, "operations": [{"name": "sha256"}]}, "source"),
    ],
)
def test_an_invalid_job_is_422_naming_the_field(
    client: TestClient, kind: str, body: dict[str, Any], field: str
) -> None:
    response = client.post(f"/v1/jobs/{kind}", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["code"] == "validation_error"
    assert error["detail"].startswith(field), error["detail"]


@pytest.mark.parametrize(
    ("kind", "body", "queue"),
    [
        ("email", {"to": "a@example.com", "subject": "s", "text": "t"}, "email"),
        ("llm", {"messages": [{"role": "user", "content": "hi"}]}, "llm"),
        (
            "file",
            {"source": {"url": "https://example.com/a.png"}, "operations": [{"name": "sha256"}]},
            "files",
        ),
    ],
)
def test_a_valid_job_is_queued_on_its_own_queue(
    client: TestClient, quiet_redis: Any, kind: str, body: dict[str, Any], queue: str
) -> None:
    response = client.post(f"/v1/jobs/{kind}", json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    assert quiet_redis.llen(queue) == 1
