"""The OpenAPI document tells the truth about errors, constraints and job kinds (schemathesis checks
the rest against the live API in tests/e2e/test_schemathesis.py)."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient

from core.kinds import KINDS
from tests.conftest import AUTH

ROOT = Path(__file__).resolve().parents[2]


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
        for p in schema["paths"]["/v1/jobs/echo"]["post"]["parameters"]
        if p["name"] == "Idempotency-Key"
    ]
    bounds = (param["schema"]["minLength"], param["schema"]["maxLength"])
    for length, status in ((0, 400), (bounds[0], 202), (bounds[1], 202), (bounds[1] + 1, 400)):
        headers = {**AUTH, "Idempotency-Key": "k" * length}
        answer = client.post("/v1/jobs/echo", json={"message": length}, headers=headers)
        assert answer.status_code == status, (length, answer.text)


def test_a_405_names_the_methods_the_document_gives_the_url(client: TestClient) -> None:
    # /v1/jobs/email is the email route's (POST); any other /v1/jobs/x is a job's (GET), as
    # OpenAPI matches a concrete path before a template
    for url, allowed in (("/v1/jobs/some-id", "GET"), ("/v1/jobs/email", "POST")):
        for method in ("PUT", "OPTIONS"):
            answer = client.request(method, url, headers=AUTH)
            assert answer.status_code == 405, (method, url)
            assert answer.headers["Allow"] == allowed, (method, url)
            assert answer.json()["code"] == "method_not_allowed"


def test_an_unknown_kind_is_still_404_and_not_in_the_document(client: TestClient) -> None:
    answer = client.post("/v1/jobs/fax", json={}, headers=AUTH)
    assert (answer.status_code, answer.json()["code"]) == (404, "unknown_kind")
    assert client.post("/v1/jobs/fax", json={}).status_code == 401  # the key is checked first
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/v1/jobs/{") and "post" in paths[p]]


def _request_schema(schema: dict[str, Any], kind: str) -> dict[str, Any]:
    body = schema["paths"][f"/v1/jobs/{kind}"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    return dict(schema["components"]["schemas"][ref.rsplit("/", 1)[1]])


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_its_route_request_schema_and_example(client: TestClient, kind: str) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"][f"/v1/jobs/{kind}"]["post"]
    request = _request_schema(schema, kind)
    model = KINDS[kind].input
    own = model.model_json_schema()
    # the kind's own fields and their requirements, plus the envelope, nothing looser
    assert set(request["properties"]) == set(own["properties"]) | {
        "callback_url",
        "run_at",
        "delay_seconds",
    }
    assert request.get("required", []) == own.get("required", [])
    assert request.get("additionalProperties") == own.get("additionalProperties")
    assert request["properties"]["delay_seconds"]["maximum"] == 30 * 24 * 3600
    # the example is a real input of the kind, and the API takes it
    example = operation["requestBody"]["content"]["application/json"]["example"]
    assert example and request["examples"] == [example]
    model.model_validate(example)
    answer = client.post(f"/v1/jobs/{kind}", json=example, headers=AUTH)
    assert answer.status_code == 202, answer.text
    # with the envelope too: the request schema's extra fields are the ones the route takes
    enveloped = {**example, "delay_seconds": 60}
    assert client.post(f"/v1/jobs/{kind}", json=enveloped, headers=AUTH).status_code == 202


def _validator(schema: dict[str, Any], kind: str) -> jsonschema_rs.Draft202012Validator:
    name = f"{kind.capitalize()}JobRequest"
    root = {"$ref": f"#/components/schemas/{name}", "components": schema["components"]}
    return jsonschema_rs.Draft202012Validator(root)


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("email", {"to": ["a@example.com"], "text": "x", "attachments": [{"filename": "a"}]}),
        ("file", {"source": {}, "operations": [{"name": "sha256"}]}),
        ("file", {"source": {"file_id": None, "url": None}, "operations": [{"name": "sha256"}]}),
        ("file", {"source": {"url": "https://example.com/a"}, "operations": [{"name": "nope"}]}),
        ("echo", {"message": 1, "run_at": "2026-01-01T00:00:00Z", "delay_seconds": 5}),
        ("echo", {"message": 1, "delay_seconds": -1}),
    ],
)
def test_rules_the_document_states_are_the_ones_the_api_enforces(
    client: TestClient, kind: str, body: dict[str, Any]
) -> None:
    schema = client.get("/openapi.json").json()
    assert not _validator(schema, kind).is_valid(body)
    answer = client.post(f"/v1/jobs/{kind}", json=body, headers=AUTH)
    assert (answer.status_code, answer.json()["code"]) == (422, "validation_error"), answer.text


def test_the_examples_are_valid_by_the_document(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for kind, spec in KINDS.items():
        _validator(schema, kind).validate(dict(spec.example))


def test_the_email_request_requires_its_recipients(client: TestClient) -> None:
    request = _request_schema(client.get("/openapi.json").json(), "email")
    assert request["required"] == ["to"]
    assert request["properties"]["to"]["minItems"] == 1
    assert request["additionalProperties"] is False


def test_a_generated_client_has_a_typed_model_per_kind(client: TestClient, tmp_path: Path) -> None:
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(client.get("/openapi.json").json()))
    out = tmp_path / "models.py"
    generate = [
        sys.executable,
        "-m",
        "datamodel_code_generator",
        "--input",
        str(document),
        "--input-file-type",
        "openapi",
        "--output-model-type",
        "pydantic_v2.BaseModel",
        "--output",
        str(out),
    ]
    run = subprocess.run(generate, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    source = out.read_text()
    classes = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)}
    for kind in KINDS:
        name = f"{kind.capitalize()}JobRequest"
        assert name in classes, sorted(classes)
        fields = {
            stmt.target.id
            for stmt in classes[name].body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
        }
        assert {"callback_url", "run_at", "delay_seconds"} <= fields, (name, fields)
    # the generated models load and take each kind's example
    loader = importlib.util.spec_from_file_location("generated_client_models", out)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    sys.modules[loader.name] = module  # pydantic resolves the module's annotations through it
    try:
        loader.loader.exec_module(module)
        for kind, spec in KINDS.items():
            getattr(module, f"{kind.capitalize()}JobRequest").model_validate(dict(spec.example))
    finally:
        del sys.modules[loader.name]


def test_dead_letter_times_are_iso_8601_only(client: TestClient) -> None:
    for bad in ("0.5", "-5.9e-08", "1700000000"):
        answer = client.get(f"/v1/dead-letters?since={bad}", headers=AUTH)
        assert answer.status_code == 422, bad
    assert (
        client.get("/v1/dead-letters?since=2026-01-01T00:00:00Z", headers=AUTH).status_code == 200
    )
