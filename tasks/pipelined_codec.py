"""What the pipelined connection (tasks/pipelined.py) puts on the wire and makes of error replies.

Commands are packed into RESP by hiredis and refused as redis-py refuses them; an error reply
becomes the redis-py exception redis-py would raise for it, so callers of either client handle
the same classes.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    DataError,
    ExecAbortError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)

# Redis error prefixes redis-py turns into its own classes; the API tells a store that cannot
# serve right now (LOADING, READONLY, OOM, ...: 503) from our own bug (WRONGTYPE: 500) by them.
_ERRORS: dict[str, type[Exception]] = {
    "NOSCRIPT": NoScriptError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
    "OOM": OutOfMemoryError,
    "MASTERDOWN": MasterDownError,
    "TRYAGAIN": TryAgainError,
    "EXECABORT": ExecAbortError,
    "NOPERM": NoPermissionError,
    "NOAUTH": AuthenticationError,
    "WRONGPASS": AuthenticationError,
}


def error_of(reply: ResponseError) -> Exception:
    """The redis-py exception for an error reply, by its prefix (the reply itself if none)."""
    text = str(reply)
    cls = _ERRORS.get(text.partition(" ")[0])
    return cls(text) if cls is not None else reply


def pack(args: tuple[Any, ...]) -> bytes:
    """One command in RESP, refused as redis-py refuses it (and with no reply slot taken).

    Like redis-py: an argument of a type Redis has no form for (our bug) is a DataError; text that
    can't be UTF-8 (a lone surrogate: the data's fault) raises UnicodeEncodeError itself, not a
    RedisError, so a worker does not hand its message back for a retry that would fail the same way.
    """
    try:
        return hiredis.pack_command(args)  # type: ignore[no-any-return]
    except UnicodeEncodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise DataError(f"cannot encode a Redis command argument: {exc}") from exc


MULTI = pack(("MULTI",))
EXEC = pack(("EXEC",))
