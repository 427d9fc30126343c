"""The OpenAPI document tells the truth about errors and constraints (schemathesis checks the rest
against the live API in tests/e2e/test_schemathesis.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import AUTH


def test_every_422_is_documented_as_the_error_shape(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()

    documented = [
        answer["content"]["application/json"]["schema"]
        for operations in schema["paths"].values()
        for operation in operations.values()
        for status, answer in operation["responses"].items()
        if status == "422"
    ]
    assert len(documented) >= 5
    assert all(s == {"$ref": "#/components/schemas/ErrorBody"} for s in documented)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_the_declared_idempotency_key_bounds_are_the_enforced_ones(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    [param] = [
        p
        for p in schema["paths"]["/v1/jobs/{kind}"]["post"]["parameters"]
        if p["name"] == "Idempotency-Key"
    ]
    bounds = (param["schema"]["minLength"], param["schema"]["maxLength"])
    for length, status in ((0, 400), (bounds[0], 202), (bounds[1], 202), (bounds[1] + 1, 400)):
        headers = {**AUTH, "Idempotency-Key": "k" * length}
        answer = client.post("/v1/jobs/echo", json={"message": length}, headers=headers)
        assert answer.status_code == status, (length, answer.text)


def test_a_405_names_every_method_the_url_answers(client: TestClient) -> None:
    answer = client.request("PUT", "/v1/jobs/some-id", headers=AUTH)
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "GET, POST"
    assert answer.json()["code"] == "method_not_allowed"


def test_dead_letter_times_are_iso_8601_only(client: TestClient) -> None:
    for bad in ("0.5", "-5.9e-08", "1700000000"):
        answer = client.get(f"/v1/dead-letters?since={bad}", headers=AUTH)
        assert answer.status_code == 422, bad
    assert (
        client.get("/v1/dead-letters?since=2026-01-01T00:00:00Z", headers=AUTH).status_code == 200
    )
