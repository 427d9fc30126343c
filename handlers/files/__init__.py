"""File storage and the file-processing job: plain sync functions for the `files` queue.

storage.py     FileStore: files on local disk, streamed in and hashed (the API's uploads too)
catalog.py     the operations a job may name, their params models, and the registry
models.py      FileJob (the request the API validates) and FileResult
operations.py  the built-in operations: sha256, content_type, video_probe, video_transcode
images.py      the thumbnail operation (Pillow)
job.py         run_file_job: resolve the source, run the operations (workers only)

The package itself imports only the light half (storage, catalog, models): the API loads it, and
must not load Pillow. Workers import run_file_job from job.py, which registers every operation.
"""

from handlers.files.catalog import OPERATION_PARAMS, OpContext, Operation, Params, operation
from handlers.files.models import FileJob, FileResult, FileSource, OperationResult, OperationSpec
from handlers.files.storage import FILE_ID_PATTERN, FileStore, FileWriter, StoredFile

__all__ = [
    "FILE_ID_PATTERN",
    "OPERATION_PARAMS",
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
    "operation",
]
