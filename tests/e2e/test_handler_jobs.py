"""Email, LLM and file jobs end to end: the API, real Redis, real workers, real test servers."""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from pathlib import Path

from PIL import Image

from tests.e2e.conftest import FINAL, HandlerStack


def test_an_email_job_is_delivered_over_smtp(handler_stack: HandlerStack) -> None:
    to = f"alice-{uuid.uuid4().hex[:8]}@example.com"
    attachment = base64.b64encode(b"col1,col2\n1,2\n").decode()
    with handler_stack.client() as http:
        job_id = handler_stack.submit(
            http,
            "email",
            {
                "to": [to],
                "subject": "Your report",
                "text": "Plain hello",
                "html": "<p>HTML hello</p>",
                "attachments": [
                    {"filename": "r.csv", "content_type": "text/csv", "content_base64": attachment}
                ],
            },
        )
        view = handler_stack.wait_status(http, job_id, FINAL)
    assert view["status"] == "succeeded", view
    message_id = f"<{job_id}@localhost>"  # from the job id: the same on every attempt
    assert view["result"] == {"message_id": message_id, "accepted": [to], "refused": {}}
    msg = handler_stack.smtp.to(to)
    assert msg is not None
    assert msg["Subject"] == "Your report"
    assert msg["Message-ID"] == message_id
    assert msg["From"] == "gateway@localhost"
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and text.get_content().strip() == "Plain hello"
    assert html is not None and "HTML hello" in html.get_content()
    [att] = list(msg.iter_attachments())
    assert att.get_filename() == "r.csv"
    assert att.get_content() == "col1,col2\n1,2\n"


def test_an_smtp_451_is_retried_and_succeeds_once_the_server_takes_it(
    handler_stack: HandlerStack,
) -> None:
    to = f"greylisted-{uuid.uuid4().hex[:8]}@example.com"
    handler_stack.smtp.rcpt_replies[to] = "451 4.7.1 Greylisted, try again later"
    with handler_stack.client() as http:
        job_id = handler_stack.submit(http, "email", {"to": to, "subject": "s", "text": "t"})
        view = handler_stack.wait_status(http, job_id, ("retrying", *FINAL))
        assert view["status"] == "retrying", view
        assert view["error"]["code"] == "smtp_transient"
        assert "451" in view["error"]["detail"]
        del handler_stack.smtp.rcpt_replies[to]  # the server is fixed
        handler_stack.make_due_now(job_id)
        view = handler_stack.wait_status(http, job_id, FINAL)
    assert view["status"] == "succeeded", view
    assert view["attempts"] == 2
    msg = handler_stack.smtp.to(to)
    assert msg is not None and msg["Message-ID"] == f"<{job_id}@localhost>"


def test_an_smtp_550_fails_at_once(handler_stack: HandlerStack) -> None:
    to = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
    handler_stack.smtp.rcpt_replies[to] = "550 5.1.1 No such user"
    with handler_stack.client() as http:
        job_id = handler_stack.submit(http, "email", {"to": to, "subject": "s", "text": "t"})
        view = handler_stack.wait_status(http, job_id, FINAL)
    assert view["status"] == "failed", view
    assert view["attempts"] == 1
    assert view["error"]["code"] == "recipients_refused"
    assert handler_stack.smtp.to(to) is None


def test_an_llm_job_runs_against_an_openai_compatible_server(handler_stack: HandlerStack) -> None:
    with handler_stack.client() as http:
        job_id = handler_stack.submit(
            http,
            "llm",
            {
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "say hello back"},
                ],
                "temperature": 0.2,
            },
        )
        view = handler_stack.wait_status(http, job_id, FINAL)
    assert view["status"] == "succeeded", view
    result = view["result"]
    assert result["text"] == "say hello back"  # the stub echoes the last user message
    assert result["finish_reason"] == "stop"
    assert result["model"] == "stub-model"  # LLM_DEFAULT_MODEL, as the job named none
    assert result["usage"]["total_tokens"] > 0
    assert result["latency_ms"] >= 0


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_a_file_job_hashes_and_thumbnails_an_upload(handler_stack: HandlerStack) -> None:
    image = _png(400, 200)
    with handler_stack.client() as http:
        uploaded = http.post("/v1/files", files={"file": ("photo.png", image, "image/png")})
        assert uploaded.status_code == 201, uploaded.text
        meta = uploaded.json()
        assert meta["sha256"] == hashlib.sha256(image).hexdigest()
        assert meta["size"] == len(image)
        assert (meta["filename"], meta["content_type"]) == ("photo.png", "image/png")
        job_id = handler_stack.submit(
            http,
            "file",
            {
                "source": {"file_id": meta["id"]},
                "operations": [
                    {"name": "sha256"},
                    {"name": "thumbnail", "params": {"width": 64, "height": 64}},
                ],
            },
        )
        view = handler_stack.wait_status(http, job_id, FINAL)
        assert view["status"] == "succeeded", view
        assert view["progress"] == 100
        result = view["result"]
        assert result["source_file_id"] == meta["id"]
        assert result["results"][0]["result"]["sha256"] == hashlib.sha256(image).hexdigest()
        [output] = result["outputs"]
        assert result["results"][1]["result"]["output_file_id"] == output
        thumb = http.get(f"/v1/files/{output}")
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert im.size == (64, 32)


def test_a_file_job_on_a_missing_file_fails(handler_stack: HandlerStack) -> None:
    with handler_stack.client() as http:
        job_id = handler_stack.submit(
            http,
            "file",
            {"source": {"file_id": "f_" + "x" * 22}, "operations": [{"name": "sha256"}]},
        )
        view = handler_stack.wait_status(http, job_id, FINAL)
    assert view["status"] == "failed", view
    assert view["error"]["code"] == "file_not_found"


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_big_upload_streams_to_disk_with_flat_memory(handler_stack: HandlerStack) -> None:
    size = 256 * 1024 * 1024
    chunk = b"\xab" * (1024 * 1024)
    boundary = "bench" + uuid.uuid4().hex
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=file; filename=big.bin\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> object:
        yield head
        for _ in range(size // len(chunk)):
            yield chunk
        yield tail

    [api] = [p for p, _ in handler_stack.procs.children if p.args[-3] == "api"]
    with handler_stack.client() as http:
        small = http.post("/v1/files", files={"file": ("warm.bin", b"warm-up")})
        assert small.status_code == 201
        before = _vm_hwm_kb(api.pid)
        response = http.post(
            "/v1/files",
            content=body(),  # type: ignore[arg-type]
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + size + len(tail)),
            },
        )
        after = _vm_hwm_kb(api.pid)
    assert response.status_code == 201, response.text
    meta = response.json()
    assert meta["size"] == size
    expected = hashlib.sha256()
    for _ in range(size // len(chunk)):
        expected.update(chunk)
    assert meta["sha256"] == expected.hexdigest()
    stored = handler_stack.data_dir / "files" / meta["id"]
    assert stored.stat().st_size == size
    stored.unlink()
    # 256 MiB went through; the API's peak RSS may grow by a few buffers, not by the file
    assert after - before < 48 * 1024, f"API peak RSS grew {(after - before) // 1024} MiB"
