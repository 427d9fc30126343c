"""The file operations as a caller names them: each operation's params model, and the registry that
the implementations (operations.py, images.py) fill in on workers.

Only pydantic and the standard library: the API validates a file job's operations and params with
these without loading Pillow.

An operation is ``fn(src: Path, params: SomeParams, ctx: OpContext) -> dict``; ``@operation(name)``
registers it under a name declared in OPERATION_PARAMS, with that name's params model as the
annotation. Outputs go into ``ctx.store`` and are named in the result as ``output_file_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, Field

from handlers.files.storage import FileStore


class Params(BaseModel):
    """Base of operation params: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoParams(Params):
    """Params of an operation that takes none."""


class ThumbnailParams(Params):
    """Bounding box and output format of a thumbnail."""

    width: int = Field(ge=1, le=4096)
    height: int = Field(ge=1, le=4096)
    format: Literal["png", "jpeg", "webp"] = "png"


class TranscodeParams(Params):
    """Target container and an optional height limit."""

    format: Literal["mp4", "webm"] = "mp4"
    max_height: int | None = Field(default=None, ge=16, le=4320)


# What a file job may ask for: adding an operation is a line here and its implementation.
OPERATION_PARAMS: dict[str, type[Params]] = {
    "sha256": NoParams,
    "content_type": NoParams,
    "thumbnail": ThumbnailParams,
    "video_probe": NoParams,
    "video_transcode": TranscodeParams,
}


@dataclass
class OpContext:
    """What an operation may use besides its input: the store and a progress callback."""

    store: FileStore
    progress: Callable[[float], None]
    max_output_bytes: int = 8 << 30


OpFunc = Callable[[Path, Any, OpContext], dict[str, Any]]


@dataclass(frozen=True)
class Operation:
    """A registered operation: its name, params model and function."""

    name: str
    params_model: type[BaseModel]
    func: OpFunc


OPERATIONS: dict[str, Operation] = {}
F = TypeVar("F", bound=Callable[..., dict[str, Any]])


def operation(name: str) -> Callable[[F], F]:
    """Register fn under name; its ``params`` annotation must be the name's declared model."""

    def register(fn: F) -> F:
        model = get_type_hints(fn).get("params")
        declared = OPERATION_PARAMS.get(name)
        if declared is None:
            raise ValueError(f"operation {name!r}: declare it in OPERATION_PARAMS first")
        if model is not declared:
            raise TypeError(f"operation {name!r}: annotate params with {declared.__name__}")
        if name in OPERATIONS:
            raise ValueError(f"operation {name!r} is already registered")
        OPERATIONS[name] = Operation(name, model, fn)
        return fn

    return register
