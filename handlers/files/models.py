"""What a file job is: its source, its operations with their params, and its result.

Only pydantic: the API validates file jobs with these without loading the operations (Pillow).
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SerializeAsAny,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.config import JsonValue
from pydantic_core import PydanticCustomError

from handlers.files.catalog import OPERATION_PARAMS
from handlers.files.storage import FILE_ID_PATTERN


def _one_of_fields(*names: str) -> list[JsonValue]:
    """JSON Schema for "exactly one of these fields, not null" (oneOf its alternatives)."""
    return [{"required": [name], "properties": {name: {"type": "string"}}} for name in names]


class FileSource(BaseModel):
    """Where the job's input comes from: a stored file id or a URL, exactly one."""

    # the "exactly one" rule, stated for the OpenAPI document and clients generated from it
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"oneOf": _one_of_fields("file_id", "url")}
    )

    file_id: str | None = Field(default=None, pattern=FILE_ID_PATTERN)
    url: HttpUrl | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.file_id is None) == (self.url is None):
            raise ValueError("give exactly one of file_id or url")
        return self


_OPERATION_NAMES: list[JsonValue] = [name for name in sorted(OPERATION_PARAMS)]


class OperationSpec(BaseModel):
    """One step of a job: a registered operation's name and its params."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(json_schema_extra={"enum": _OPERATION_NAMES})
    # SerializeAsAny: dump the op's own params model, not the empty BaseModel declared here.
    params: SerializeAsAny[BaseModel] = Field(default_factory=dict, validate_default=True)

    @field_validator("name")
    @classmethod
    def _known_operation(cls, name: str) -> str:
        if name not in OPERATION_PARAMS:
            raise PydanticCustomError(
                "unknown_operation",
                "unknown operation '{name}'; expected one of: {expected}",
                {"name": name, "expected": ", ".join(sorted(OPERATION_PARAMS))},
            )
        return name

    @field_validator("params", mode="plain", json_schema_input_type=dict[str, Any])
    @classmethod
    def _op_params(cls, params: Any, info: ValidationInfo) -> Any:
        model = OPERATION_PARAMS.get(info.data.get("name", ""))
        if model is None or isinstance(params, model):
            return params  # a bad name is already reported; nothing to check params against
        # Its ValidationError nests under this field: the 422 names operations.0.params.width
        return model.model_validate(params)


class FileJob(BaseModel):
    """Input of a file job."""

    model_config = ConfigDict(extra="forbid")

    source: FileSource
    operations: list[OperationSpec] = Field(min_length=1, max_length=10)


class OperationResult(BaseModel):
    """What one operation returned."""

    name: str
    result: dict[str, Any]


class FileResult(BaseModel):
    """Result of a file job: the source, each operation's result, and the files it made."""

    source_file_id: str
    results: list[OperationResult]
    outputs: list[str]
