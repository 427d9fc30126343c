"""File storage and the file-processing job: plain sync functions for the `files` queue."""

from handlers.files.job import (
    FileJob,
    FileResult,
    FileSource,
    OperationResult,
    OperationSpec,
    run_file_job,
)
from handlers.files.operations import (
    OPERATIONS,
    OpContext,
    Operation,
    Params,
    detect_content_type,
    operation,
)
from handlers.files.storage import FILE_ID_PATTERN, FileStore, FileWriter, StoredFile

__all__ = [
    "FILE_ID_PATTERN",
    "OPERATIONS",
    "FileJob",
    "FileResult",
    "FileSource",
    "FileStore",
    "FileWriter",
    "OpContext",
    "Operation",
    "OperationResult",
    "OperationSpec",
    "Params",
    "StoredFile",
    "detect_content_type",
    "operation",
    "run_file_job",
]
