"""``/files``: reference videos and images a generation's control or init reads, uploaded once."""

from __future__ import annotations

import hashlib
import os
import tempfile

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import IdempotencyKey, OwnedFile, OwnerDep, SettingsDep, StorageDep, StoreDep
from api.enqueue import new_id
from api.idempotency import Idempotency
from api.routes.customizations import Limit, parse_cursor
from api.upload import FILE_FORM, HashingSink, receive_form
from common import media
from common.errors import NotFound
from common.files import create_file, delete_file, get_file, list_files
from common.jobstore import JobStore, encode_cursor, now
from common.schemas import FileInfo, FileList, FileRecord, FileView
from common.settings import Settings
from common.storage import StreamingUpload, file_key

router = APIRouter(tags=["files"])
SCOPE = "files"
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


def fingerprint(sha256: str, filename: str | None) -> str:
    """What makes two uploads the same request: the file's content and its name (which the answer holds)."""
    return hashlib.sha256(f"{sha256}:{filename}".encode()).hexdigest()


def created(record: FileRecord) -> JSONResponse:
    return JSONResponse(file_view(record).model_dump(mode="json"), status_code=201,
                        headers={"Location": f"/files/{record.id}"})


async def replay_upload(request: Request, claim: Idempotency, settings: Settings, store: JobStore, owner: str):
    """A retry of an upload whose key is held: 409 at once while the first is in progress (the body unread);
    else the upload is hashed (nothing stored) and, when it is the same, answered with the first one's file."""
    if claim.pending:
        claim.bound(None)  # the 409
    sink = HashingSink()
    await receive_form(request, sink, settings, form=FILE_FORM)
    held = claim.bound(fingerprint(sink.hexdigest(), sink.filename))
    try:
        record = await run_in_threadpool(get_file, store, held["file_id"], owner)
    except NotFound:
        raise NotFound(f"file {held['file_id']!r}, which the first request with this Idempotency-Key uploaded, "
                       "has been deleted since", field="file_id") from None
    return created(record)


@router.post("/files", status_code=201, response_model=FileView, openapi_extra=FORM_SCHEMA,
             summary="Upload a reference video or image",
             description="Streamed to storage with its sha256, then probed (decoded with ffmpeg, stopping past "
                         "the frame limit): 422 naming `file` when it does not decode, has no frames, or is over "
                         "the frame or pixel limits; 413 past the size limit. With an `Idempotency-Key`, a retry "
                         "of the same file (content and name) gets the first upload's file (201) and stores "
                         "nothing; another file with that key is 409.")
async def upload_file(request: Request, owner: OwnerDep, settings: SettingsDep, store: StoreDep,
                      storage: StorageDep, idempotency_key: IdempotencyKey = None):
    async with Idempotency(store, settings, owner, SCOPE, idempotency_key) as claim:
        if claim.held is not None:
            return await replay_upload(request, claim, settings, store, owner)
        upload = storage.upload_stream()
        fd, local_path = tempfile.mkstemp(prefix="stillmoving-file-")
        try:
            with os.fdopen(fd, "wb") as local:
                sink = SpooledUpload(upload, local)
                await receive_form(request, sink, settings, claim.keep_alive, form=FILE_FORM)
            info = await run_in_threadpool(media.probe, local_path, settings.max_file_frames,
                                           settings.max_file_pixels)
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
        await run_in_threadpool(claim.bind, {"file_id": file_id, "fingerprint": fingerprint(record.sha256,
                                                                                            record.filename)})
    return created(record)


@router.get("/files", response_model=FileList, summary="The caller's files, newest first")
def list_owned_files(owner: OwnerDep, store: StoreDep, limit: Limit = 20, cursor: str | None = None):
    items, next_cursor = list_files(store, owner, limit, parse_cursor(cursor))
    return FileList(items=[file_view(record) for record in items], next_cursor=encode_cursor(next_cursor))


@router.get("/files/{file_id}", response_model=FileView, summary="An uploaded file, as probed")
def read_file(record: OwnedFile):
    return file_view(record)


@router.delete("/files/{file_id}", status_code=204, response_class=Response, summary="Delete an uploaded file",
               description="Its record and its stored object (204). 409 `file_in_use`, naming the job, while a "
                           "queued or running generation reads it (as its control or init).")
def remove_file(record: OwnedFile, store: StoreDep, storage: StorageDep):
    delete_file(store, storage, record)
    return Response(status_code=204)
