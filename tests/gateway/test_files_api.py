"""POST /v1/files and GET /v1/files/{id}: streamed upload, limits, the one error shape."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.main import create_app
from tests.conftest import AUTH, make_settings

LIMIT = 256 * 1024


@pytest.fixture
def files_client(quiet_redis_url: str, prefix: str, tmp_path: Path) -> Iterator[TestClient]:
    """The app with its own data directory and a small upload limit."""
    settings = make_settings(quiet_redis_url, prefix, data_dir=tmp_path, max_upload_bytes=LIMIT)
    with TestClient(create_app(settings)) as client:
        yield client


def _leftovers(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "files").iterdir())


def test_an_upload_is_stored_and_downloadable(files_client: TestClient, tmp_path: Path) -> None:
    data = bytes(range(256)) * 300
    up = files_client.post(
        "/v1/files",
        files={"file": ("report 1.bin", data, "application/x-thing")},
        data={"note": "ignored"},
        headers=AUTH,
    )
    assert up.status_code == 201, up.text
    meta = up.json()
    assert set(meta) == {"id", "filename", "content_type", "size", "sha256"}
    assert meta["size"] == len(data)
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["filename"] == "report 1.bin"
    assert meta["content_type"] == "application/x-thing"
    down = files_client.get(f"/v1/files/{meta['id']}", headers=AUTH)
    assert down.status_code == 200
    assert down.content == data
    assert down.headers["content-type"] == "application/x-thing"
    assert down.headers["content-disposition"].startswith("attachment")
    assert down.headers["x-content-type-options"] == "nosniff"
    assert _leftovers(tmp_path) == sorted([meta["id"], meta["id"] + ".json"])


def test_files_need_an_api_key(files_client: TestClient) -> None:
    assert files_client.post("/v1/files", files={"file": ("a", b"x")}).status_code == 401
    assert files_client.get("/v1/files/f_" + "a" * 22).status_code == 401


def test_an_unknown_file_is_404_in_the_one_shape(files_client: TestClient) -> None:
    for file_id in ("f_" + "a" * 22, "../../etc/passwd", "nope"):
        response = files_client.get(f"/v1/files/{file_id}", headers=AUTH)
        assert response.status_code == 404
        assert response.json()["code"] in ("file_not_found", "not_found")
    response = files_client.get("/v1/files/f_" + "a" * 22, headers=AUTH)
    assert response.json()["code"] == "file_not_found"


def test_a_body_that_is_not_multipart_is_415(files_client: TestClient) -> None:
    response = files_client.post("/v1/files", json={"file": "x"}, headers=AUTH)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_a_multipart_body_without_a_file_part_is_422_naming_the_field(
    files_client: TestClient,
) -> None:
    response = files_client.post(
        "/v1/files", files={"attachment": ("a.txt", b"x")}, data={"f": "1"}, headers=AUTH
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["errors"][0]["loc"] == ["body", "file"]


def test_a_too_large_content_length_is_refused_before_reading(files_client: TestClient) -> None:
    response = files_client.post(
        "/v1/files", files={"file": ("big", b"x" * (LIMIT + 70_000))}, headers=AUTH
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_a_streamed_upload_over_the_limit_is_413_and_leaves_nothing(
    files_client: TestClient, tmp_path: Path
) -> None:
    boundary = "b0undary"

    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to judge by
        yield head.encode()
        for _ in range(LIMIT // 4096 + 2):
            yield b"y" * 4096
        yield f"\r\n--{boundary}--\r\n".encode()

    response = files_client.post(
        "/v1/files",
        content=body(),
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert _leftovers(tmp_path) == []


def test_a_file_of_exactly_the_limit_is_accepted(files_client: TestClient) -> None:
    response = files_client.post("/v1/files", files={"file": ("x", b"z" * LIMIT)}, headers=AUTH)
    assert response.status_code == 201
    assert response.json()["size"] == LIMIT


def test_a_body_cut_inside_the_file_is_400_and_leaves_nothing(
    files_client: TestClient, tmp_path: Path
) -> None:
    boundary = "cut"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
    response = files_client.post(
        "/v1/files",
        content=body.encode() + b"partial data",
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_multipart"
    assert _leftovers(tmp_path) == []


def test_a_multipart_type_without_a_boundary_is_400(files_client: TestClient) -> None:
    response = files_client.post(
        "/v1/files", content=b"x", headers={**AUTH, "Content-Type": "multipart/form-data"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_multipart"
