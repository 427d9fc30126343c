"""call_llm against respx-mocked providers, and once over real loopback HTTP to the stub."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr, ValidationError

from handlers.errors import PermanentError, TransientError
from handlers.llm import LlmConfig, LlmJob, LlmResult, call_llm, completions_url, parse_retry_after
from tests.handlers.llm_stub import LlmStub

URL = "http://llm.test/v1/chat/completions"
API_KEY = "sk-test-secret-key-123"


def config(**overrides: Any) -> LlmConfig:
    values: dict[str, Any] = {
        "base_url": "http://llm.test",
        "api_key": SecretStr(API_KEY),
        "default_model": "gpt-test",
    }
    return LlmConfig.model_validate(values | overrides)


def job(**fields: Any) -> LlmJob:
    return LlmJob.model_validate({"messages": [{"role": "user", "content": "Hi"}]} | fields)


def completion(text: str = "Hello!", model: str = "gpt-test-0613") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }


def run(llm_job: LlmJob, cfg: LlmConfig | None = None) -> LlmResult:
    async def go() -> LlmResult:
        async with httpx.AsyncClient() as client:
            return await call_llm(llm_job, cfg or config(), client)

    return asyncio.run(go())


def test_success_parses_text_usage_and_sends_the_right_request(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, json=completion()))
    result = run(
        job(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ],
            temperature=0.2,
            max_tokens=50,
            response_format={"type": "json_object"},
        )
    )
    assert result.text == "Hello!"
    assert result.finish_reason == "stop"
    assert result.usage == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert result.model == "gpt-test-0613"
    assert result.latency_ms >= 0
    assert json.loads(json.dumps(result.model_dump(mode="json")))["text"] == "Hello!"

    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(request.content) == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
        "response_format": {"type": "json_object"},
    }


def test_default_model_is_used_and_optional_fields_are_omitted(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, json=completion()))
    run(job(), config(api_key=None))
    request = route.calls.last.request
    assert json.loads(request.content) == {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    assert "authorization" not in request.headers


@pytest.mark.parametrize(
    "base_url",
    ["http://llm.test", "http://llm.test/", "http://llm.test/v1", "http://llm.test/v1/"],
)
def test_base_url_with_or_without_v1(respx_mock: respx.MockRouter, base_url: str) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, json=completion()))
    run(job(), config(base_url=base_url))
    assert route.call_count == 1
    assert completions_url("https://proxy.test/openai/v1") == (
        "https://proxy.test/openai/v1/chat/completions"
    )


def test_429_retry_after_seconds_is_honoured(respx_mock: respx.MockRouter) -> None:
    respx_mock.post(URL).mock(
        return_value=httpx.Response(
            429, headers={"Retry-After": "17"}, json={"error": {"message": "Rate limit reached"}}
        )
    )
    with pytest.raises(TransientError) as caught:
        run(job())
    assert caught.value.code == "llm_rate_limited"
    assert caught.value.retry_after == 17
    assert "Rate limit reached" in caught.value.detail


def test_retry_after_http_date_and_clamping() -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    got = parse_retry_after(httpx.Headers({"Retry-After": later}), cap=300)
    assert got is not None and 100 < got <= 120
    assert parse_retry_after(httpx.Headers({"Retry-After": "86400"}), cap=300) == 300
    assert parse_retry_after(httpx.Headers({"Retry-After": "-5"}), cap=300) == 0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500"}), cap=300) == 1.5
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"}), cap=300) is None
    assert parse_retry_after(httpx.Headers(), cap=300) is None


def test_503_then_success_is_transient_then_ok(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(
        side_effect=[
            httpx.Response(503, text="upstream overloaded"),
            httpx.Response(200, json=completion()),
        ]
    )
    with pytest.raises(TransientError) as caught:
        run(job())
    assert caught.value.code == "llm_unavailable" and caught.value.retry_after is None
    assert run(job()).text == "Hello!"
    assert route.call_count == 2


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ReadTimeout, "timeout"),
        (httpx.ConnectTimeout, "timeout"),
        (httpx.ConnectError, "llm_unavailable"),
    ],
)
def test_timeouts_and_connection_errors_are_transient(
    respx_mock: respx.MockRouter, exc: type[Exception], code: str
) -> None:
    respx_mock.post(URL).mock(side_effect=exc)
    with pytest.raises(TransientError) as caught:
        run(job(timeout=5))
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "llm_rejected"),
        (401, "llm_auth_failed"),
        (403, "llm_auth_failed"),
        (404, "llm_rejected"),
        (422, "llm_rejected"),
    ],
)
def test_client_errors_are_permanent_and_never_leak_the_key(
    respx_mock: respx.MockRouter, status: int, code: str
) -> None:
    # Some providers echo the key they were given; the excerpt must not carry it on.
    message = f"Incorrect API key provided: {API_KEY}. Or model does not exist."
    respx_mock.post(URL).mock(
        return_value=httpx.Response(status, json={"error": {"message": message}})
    )
    with pytest.raises(PermanentError) as caught:
        run(job())
    assert caught.value.code == code
    assert "Incorrect API key provided" in caught.value.detail
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>gateway error</html>"),
        httpx.Response(200, json={"choices": []}),
        httpx.Response(200, json={"error": "oops"}),
        httpx.Response(200, json=[1, 2]),
    ],
)
def test_malformed_responses_are_permanent(
    respx_mock: respx.MockRouter, response: httpx.Response
) -> None:
    respx_mock.post(URL).mock(return_value=response)
    with pytest.raises(PermanentError) as caught:
        run(job())
    assert caught.value.code == "llm_bad_response"


def test_no_model_anywhere_is_permanent() -> None:
    with pytest.raises(PermanentError) as caught:
        run(job(), config(default_model=None))
    assert caught.value.code == "llm_no_model"


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"messages": []}, ("messages",)),
        ({"messages": [{"role": "robot", "content": "x"}]}, ("messages", 0, "role")),
        ({"temperature": 2.5}, ("temperature",)),
        ({"max_tokens": 0}, ("max_tokens",)),
        ({"timeout": 10_000}, ("timeout",)),
    ],
)
def test_invalid_jobs_name_the_field(fields: dict[str, Any], loc: tuple[str | int, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        job(**fields)
    assert loc in [tuple(e["loc"]) for e in caught.value.errors()]


def test_against_the_stub_over_loopback() -> None:
    with LlmStub() as stub:
        result = run(
            job(
                messages=[
                    {"role": "system", "content": "x"},
                    {"role": "user", "content": "ping pong"},
                ]
            ),
            config(base_url=f"{stub.base_url}/v1"),
        )
    assert result.text == "ping pong"
    assert result.finish_reason == "stop"
    assert result.model == "gpt-test"
    assert result.usage["completion_tokens"] == 2
    assert stub.app.requests == 1


def test_trace_headers_go_out_with_the_call(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(URL).mock(return_value=httpx.Response(200, json=completion()))
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    async def go() -> LlmResult:
        async with httpx.AsyncClient() as client:
            headers = {"traceparent": traceparent, "tracestate": "a=1"}
            return await call_llm(job(), config(), client, headers)

    asyncio.run(go())
    sent = route.calls.last.request.headers
    assert (sent["traceparent"], sent["tracestate"]) == (traceparent, "a=1")
    assert sent["authorization"] == f"Bearer {API_KEY}"
