"""``/files``: reference videos and images a generation's control or init reads, uploaded once."""

from __future__ import annotations

import os
import tempfile

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import OwnedFile, OwnerDep, SettingsDep, StorageDep, StoreDep
from api.enqueue import new_id
from api.upload import FILE_FORM, receive_form
from common import media
from common.files import create_file, delete_file
from common.jobstore import now
from common.schemas import FileInfo, FileRecord, FileView
from common.storage import StreamingUpload, file_key

router = APIRouter(tags=["files"])
FORM_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "a video (MP4, WebM, GIF) or an image (PNG, JPEG)"}}},
            "encoding": {"file": {"contentType": "application/octet-stream"}},
        }},
    }
}


class SpooledUpload:
    """The upload streamed to storage and, for the probe, to a local file (bounded by ``max_file_bytes``)."""

    def __init__(self, upload: StreamingUpload, local):
        self.upload, self.local = upload, local
        self.filename: str | None = None

    @property
    def size(self) -> int:
        return self.upload.size

    def write(self, data: bytes) -> None:
        self.upload.write(data)
        self.local.write(data)


def file_view(record: FileRecord) -> FileView:
    return FileView(file_id=record.id, **record.model_dump(include=set(FileInfo.model_fields)))


@router.post("/files", status_code=201, response_model=FileView, openapi_extra=FORM_SCHEMA,
             summary="Upload a reference video or image",
             description="Streamed to storage with its sha256, then probed (decoded with ffmpeg, stopping past "
                         "the frame limit): 422 naming `file` when it does not decode, has no frames, or is over "
                         "the frame or pixel limits; 413 past the size limit.")
async def upload_file(request: Request, owner: OwnerDep, settings: SettingsDep, store: StoreDep,
                      storage: StorageDep):
    upload = storage.upload_stream()
    fd, local_path = tempfile.mkstemp(prefix="stillmoving-file-")
    try:
        with os.fdopen(fd, "wb") as local:
            sink = SpooledUpload(upload, local)
            await receive_form(request, sink, settings, form=FILE_FORM)
        info = await run_in_threadpool(media.probe, local_path, settings.max_file_frames, settings.max_file_pixels)
        file_id = new_id("file")
        await run_in_threadpool(upload.commit, file_key(file_id))
        record = FileRecord(id=file_id, owner=owner, kind=info.kind, frames=info.frames, width=info.width,
                            height=info.height, fps=info.fps, size=upload.size, sha256=upload.hexdigest(),
                            content_type=info.content_type, filename=sink.filename, key=file_key(file_id),
                            created_at=now())
        await run_in_threadpool(create_file, store, record)
    except BaseException:
        await run_in_threadpool(upload.abort)
        raise
    finally:
        os.unlink(local_path)
    body = file_view(record).model_dump(mode="json")
    return JSONResponse(body, status_code=201, headers={"Location": f"/files/{file_id}"})


@router.get("/files/{file_id}", response_model=FileView, summary="An uploaded file, as probed")
def read_file(record: OwnedFile):
    return file_view(record)


@router.delete("/files/{file_id}", status_code=204, response_class=Response, summary="Delete an uploaded file",
               description="Its record and its stored object (204). A generation queued with it fails with "
                           "input_missing when it runs.")
def remove_file(record: OwnedFile, store: StoreDep, storage: StorageDep):
    delete_file(store, storage, record)
    return Response(status_code=204)
