"""Log lines for the API, the workers and beat: one JSON object per line (LOG_FORMAT=json) or text,
each carrying the ids of the work in play, and never a secret.

Ids: one context variable holds the ids of the job, delivery or event being worked on. They are
bound where the work is claimed (tasks/runtime.py, tasks/callbacks.py, tasks/webhooks.py) and
cleared after every Celery task (tasks/app.py), so a pool thread's next task starts clean. Context
variables are per thread, per asyncio task and (greenlet >= 1) per greenlet; a loop-pool task's
greenlet shares its context with the asyncio task that drives it (tasks/loop.py), so the coroutines
it waits on (its handler) log with its ids too.

Secrets: every line, in both formats, passes through `scrub`: the values of the secret settings
and of the inbound sources' secrets are masked, and every URL loses its user info and its query
string (a callback URL may carry a token, `https://host/cb?token=...`; a Redis URL a password),
whoever logged it: our code, Celery, kombu, httpx or uvicorn.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import tomllib
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from core.tracing import current_trace_id

# The order fields appear in; trace_id is the current span's (core/tracing.py), where there is one.
ID_FIELDS = ("job_id", "event_id", "delivery_id", "kind", "attempt", "queue", "trace_id")
MASK = "***"
# shorter values would mask common words; no secret the gateway accepts is that short in practice
MIN_SECRET_LENGTH = 6

_ids: ContextVar[dict[str, Any] | None] = ContextVar("gateway_log_ids", default=None)
# Celery's "Task <name>[<id>] received" is logged on the consumer thread, before a claim binds
# anything; the task id there is the job's, delivery's or event's own id (tasks/protocol.py)
_TASK_ID_FIELD = {"jobs": "job_id", "callbacks": "delivery_id", "webhooks": "event_id"}

# scheme://[userinfo@]host/path[?query][#fragment]; quotes and brackets end a URL inside a repr
_URL = re.compile(
    r"([a-zA-Z][a-zA-Z0-9+.\-]*://)([^\s/?#'\"<>]*@)?([^\s?#'\"<>]*)([?#][^\s'\"<>]*)?"
)


def bind(**ids: Any) -> None:
    """Add ids to every line logged from this context until `clear`.

    ``parent="job:<id>"`` / ``"event:<id>"`` (a delivery's parent) binds ``job_id`` / ``event_id``.
    """
    parent = ids.pop("parent", None)
    if parent:
        what, _, parent_id = str(parent).partition(":")
        if what in ("job", "event"):
            ids.setdefault(f"{what}_id", parent_id)
    _ids.set({**(_ids.get() or {}), **{k: v for k, v in ids.items() if v is not None}})


def clear() -> None:
    """Forget the ids bound in this context (the end of a task)."""
    if _ids.get() is not None:
        _ids.set(None)


def current_ids() -> dict[str, Any]:
    """The ids bound in this context."""
    return dict(_ids.get() or {})


def redact_url(url: str) -> str:
    """``url`` without user info, query or fragment (``?...`` is kept as a marker)."""
    return _URL.sub(_redact_match, url)


def _redact_match(match: re.Match[str]) -> str:
    scheme, _userinfo, rest, query = match.groups()
    return f"{scheme}{rest}{'?' + MASK if query else ''}"


class Scrubber:
    """Masks secret values and URL credentials in a piece of text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        # a whsec_ secret is also its base64 key alone
        values |= {s[6:] for s in values if s.startswith("whsec_") and len(s) - 6 >= 6}
        # longest first: a secret containing another is masked whole
        self.secrets = sorted(values, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        """``text`` with every secret masked and every URL redacted."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "://" in text:
            text = redact_url(text)
        return text


class GatewayFormatter(logging.Formatter):
    """One line per record: a JSON object (``json``) or Celery-like text with the ids appended."""

    def __init__(self, style_name: str = "text", secrets: Iterable[str] = ()) -> None:
        super().__init__("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
        self.json = style_name == "json"
        self.scrub = Scrubber(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one scrubbed line."""
        ids = _ids.get() or _celery_task_ids(record)
        trace_id = current_trace_id()
        if trace_id:
            ids = {**(ids or {}), "trace_id": trace_id}
        if not self.json:
            line = super().format(record)
            if ids:
                line += " [" + " ".join(f"{k}={ids[k]}" for k in ID_FIELDS if k in ids) + "]"
            return self.scrub(line)
        doc: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": self.scrub(record.getMessage()),
            "process": record.process,
        }
        if ids:
            doc.update((k, ids[k]) for k in ID_FIELDS if k in ids)
        if record.exc_info:
            doc["exception"] = self.scrub(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exception"] = self.scrub(record.exc_text)
        return orjson.dumps(doc, default=str).decode()


def _celery_task_ids(record: logging.LogRecord) -> dict[str, Any] | None:
    data = getattr(record, "data", None)  # Celery passes its task lines' context as extra
    if not isinstance(data, dict) or "id" not in data or "name" not in data:
        return None
    field = _TASK_ID_FIELD.get(str(data["name"]).partition(".")[0])
    return {field: data["id"]} if field else None


def settings_formatter() -> GatewayFormatter:
    """A formatter for this process's settings (LOG_FORMAT, the secrets to mask)."""
    from core.settings import get_settings

    settings = get_settings()
    return GatewayFormatter(settings.log_format or "text", secrets_of(settings))


def secrets_of(settings: Any) -> list[str]:
    """Every secret setting's value (API keys, signing secrets, SMTP password, LLM key), and the
    inbound sources' secrets (the variables the sources file's ``secrets_env`` names)."""
    values = [value for _, value in settings.secret_values()]
    path = settings.webhook_sources_file
    if path:
        try:
            sources = tomllib.loads(Path(path).read_text()).get("sources", {})
        except (OSError, ValueError):
            return values  # the sources loader says what is wrong with the file
        for source in sources.values():
            names = source.get("secrets_env", []) if isinstance(source, dict) else []
            values += [os.environ[n] for n in names if isinstance(n, str) and os.environ.get(n)]
    return values


def dict_config(level: str | int = "INFO") -> dict[str, Any]:
    """logging.config.dictConfig for a gateway process; uvicorn takes it as ``log_config``."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"gateway": {"()": "core.logs.settings_formatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "gateway",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {
            "handlers": ["stderr"],
            "level": logging.getLevelName(level) if isinstance(level, int) else level.upper(),
        },
        "loggers": {
            # uvicorn's loggers carry handlers of their own when it configures them: ours instead
            **{
                name: {"handlers": [], "propagate": True}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
            # httpx logs every request's full URL at INFO; scrubbed anyway, but one line per
            # call is noise at hundreds of calls a second
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }


def configure(level: str | int = "INFO") -> None:
    """Send every logger's lines to stderr in LOG_FORMAT, secrets masked (this process)."""
    logging.config.dictConfig(dict_config(level))
    # warnings (Celery's, kombu's) become log lines too, in the same format
    logging.captureWarnings(True)
