"""Files: upload one (streamed to the store as it arrives) and download it by id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from gateway.deps import OwnerDep, SettingsDep
from gateway.errors import ApiError, responses
from gateway.uploads import FileUpload, check_declared_length, multipart_boundary, too_large
from handlers.errors import PermanentError
from handlers.files import FileStore

router = APIRouter(prefix="/v1/files", tags=["files"])


class FileView(BaseModel):
    """A stored file as a caller sees it."""

    id: str
    filename: str
    content_type: str
    size: int
    sha256: str


def get_file_store(request: Request, settings: SettingsDep) -> FileStore:
    """The store under DATA_DIR/files, the one the `files` workers read and write."""
    store: FileStore | None = getattr(request.app.state, "file_store", None)
    if store is None:
        store = request.app.state.file_store = FileStore(settings.files_dir)
    return store


FileStoreDep = Annotated[FileStore, Depends(get_file_store)]


@router.post(
    "",
    status_code=201,
    response_model=FileView,
    responses=responses(400, 401, 413, 415, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def upload_file(
    request: Request, owner: OwnerDep, settings: SettingsDep, store: FileStoreDep
) -> FileView:
    """Store the multipart field `file`, streamed to disk and hashed on the way; 201 with its id."""
    limit = settings.max_upload_bytes
    boundary = multipart_boundary(request)
    check_declared_length(request, limit)
    upload = await FileUpload(request, boundary, limit).start()
    try:
        stored = await store.save_async_stream(
            upload.chunks(),
            max_bytes=limit,
            filename=upload.filename,
            content_type=upload.content_type,
        )
    except PermanentError as exc:
        if exc.code == "too_large":
            raise too_large(limit) from None
        raise
    return FileView.model_validate(stored.model_dump())


@router.get(
    "/{file_id}",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **responses(401, 404)},
)
async def download_file(file_id: str, owner: OwnerDep, store: FileStoreDep) -> FileResponse:
    """The file's bytes, as an attachment with its stored name and type."""
    meta = store.get(file_id)
    if meta is None:
        raise ApiError("file_not_found", f"no file {file_id[:80]}")
    return FileResponse(
        store.path(file_id),
        media_type=meta.content_type,
        filename=meta.filename,
        content_disposition_type="attachment",
        # the type was declared by whoever uploaded it: never let a browser render it as ours
        headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"},
    )
