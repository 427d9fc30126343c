"""Call an OpenAI-compatible chat completions endpoint; 429/5xx/timeouts are transient."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from handlers.errors import PermanentError, TransientError

MAX_CALL_TIMEOUT = 600.0  # a job may ask for longer than the default, never more than this
_EXCERPT = 200


class LlmConfig(BaseModel):
    """Where the provider lives and how long to wait for it; built once per worker."""

    base_url: str = Field(pattern=r"^https?://")
    api_key: SecretStr | None = None
    default_model: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    max_retry_after: float = Field(default=300.0, ge=0)


class ChatMessage(BaseModel):
    """One chat turn; content is text or the provider's list of content parts."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]]
    name: str | None = None
    tool_call_id: str | None = None


class LlmJob(BaseModel):
    """One chat completion request."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    response_format: dict[str, Any] | None = None
    timeout: float | None = Field(default=None, gt=0, le=MAX_CALL_TIMEOUT)


class LlmResult(BaseModel):
    """The first choice's text, why it stopped, token usage and how long the call took."""

    text: str
    finish_reason: str | None
    usage: dict[str, int]
    model: str
    latency_ms: float


class _Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _Message(BaseModel):
    content: str | None = None  # None when the model answered with tool calls only


class _Choice(BaseModel):
    message: _Message
    finish_reason: str | None = None


class _Completion(BaseModel):
    model: str | None = None
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage = Field(default_factory=_Usage)


def completions_url(base_url: str) -> str:
    """Return the chat completions URL for a base URL given with or without /v1."""
    base = base_url.rstrip("/")
    base = base.removesuffix("/v1")
    return f"{base}/v1/chat/completions"


@lru_cache(maxsize=16)
def _parsed_completions_url(base_url: str) -> httpx.URL:
    # parsed once: httpx parses a string URL on every request, a tenth of a call's CPU at 500/s
    return httpx.URL(completions_url(base_url))


def parse_retry_after(headers: httpx.Headers, cap: float) -> float | None:
    """Read Retry-After (seconds or HTTP date, or retry-after-ms) as seconds, clamped to cap."""
    seconds: float | None = None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            seconds = None
    if seconds is None and (value := headers.get("retry-after")) is not None:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def _provider_message(response: httpx.Response, secret: str | None) -> str:
    # Providers disagree: OpenAI {"error": {"message"}}, Ollama {"error": "..."}, others plain text.
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.text
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        body = error.get("message", error) if isinstance(error, dict) else error
    text = " ".join(str(body).split())[:_EXCERPT]
    return text.replace(secret, "***") if secret else text


def _status_error(response: httpx.Response, config: LlmConfig, secret: str | None) -> Exception:
    status = response.status_code
    detail = f"LLM provider answered {status}: {_provider_message(response, secret)}"
    if status == 429:
        retry_after = parse_retry_after(response.headers, config.max_retry_after)
        return TransientError(detail, code="llm_rate_limited", retry_after=retry_after)
    if status >= 500 or status == 408:
        retry_after = parse_retry_after(response.headers, config.max_retry_after)
        return TransientError(detail, code="llm_unavailable", retry_after=retry_after)
    if status in (401, 403):
        return PermanentError(detail, code="llm_auth_failed")
    if 400 <= status < 500:
        return PermanentError(detail, code="llm_rejected")
    return PermanentError(detail, code="llm_bad_response")  # e.g. a redirect we do not follow


def _request_body(job: LlmJob, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [m.model_dump(exclude_none=True) for m in job.messages],
    }
    optional = {
        "temperature": job.temperature,
        "max_tokens": job.max_tokens,
        "response_format": job.response_format,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


async def call_llm(
    job: LlmJob,
    config: LlmConfig,
    client: httpx.AsyncClient,
    trace_headers: Mapping[str, str] | None = None,
) -> LlmResult:
    """Run one chat completion on the shared client; raise TransientError or PermanentError.

    ``trace_headers`` (``traceparent``/``tracestate`` of the call's span) go out with it.
    """
    model = job.model or config.default_model
    if not model:
        raise PermanentError("no model given and no default configured", code="llm_no_model")
    secret = config.api_key.get_secret_value() if config.api_key else None
    # the body encoded by orjson: stdlib json (httpx's json=) was a measurable share of a call
    headers = {"Content-Type": "application/json", **(trace_headers or {})}
    if secret:
        headers["Authorization"] = f"Bearer {secret}"
    timeout = job.timeout or config.timeout
    started = time.perf_counter()
    try:
        response = await client.post(
            _parsed_completions_url(config.base_url),
            content=orjson.dumps(_request_body(job, model)),
            headers=headers,
            timeout=timeout,
        )
    except httpx.TimeoutException as exc:
        detail = f"LLM call timed out after {timeout}s ({type(exc).__name__})"
        raise TransientError(detail, code="timeout") from exc
    except httpx.TransportError as exc:
        detail = f"LLM provider unreachable: {type(exc).__name__}: {str(exc)[:_EXCERPT]}"
        raise TransientError(detail, code="llm_unavailable") from exc
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    if not response.is_success:
        raise _status_error(response, config, secret)
    try:
        completion = _Completion.model_validate_json(response.content)
    except ValidationError as exc:
        detail = f"LLM provider sent an unusable completion: {str(exc)[:_EXCERPT]}"
        raise PermanentError(detail, code="llm_bad_response") from None
    choice = completion.choices[0]
    return LlmResult(
        text=choice.message.content or "",
        finish_reason=choice.finish_reason,
        usage=completion.usage.model_dump(),
        model=completion.model or model,
        latency_ms=latency_ms,
    )
