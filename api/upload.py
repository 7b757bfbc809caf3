"""Streaming parse of ``multipart/form-data`` for ``POST /customizations`` and ``POST /files``.

The file part (``checkpoint``, ``file``) goes straight into a `StreamingUpload` (S3 multipart, sha256 while
streaming, one part in memory at most); the size limit is enforced as bytes arrive. The ``config`` part is
small JSON held in memory.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from fastapi import Request
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from common.errors import BadRequest, InvalidArgument, PayloadTooLarge, ServiceError, UnsupportedMediaType
from common.settings import Settings
from common.storage import STORAGE_ERRORS

MAX_CONFIG_BYTES = 64 * 1024
KEEP_ALIVE_S = 10.0


class Sink(Protocol):
    """Where a form's file part goes: storage (`StreamingUpload`), only its hash (`HashingSink`), or both and a
    local copy (`api.routes.files`)."""

    filename: str | None

    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class Form:
    """What a route's form holds: one file part (its filename checked by `check_filename`), and optionally one
    JSON part; `limit` names the setting that bounds the file."""

    route: str
    file_part: str
    json_part: str | None
    limit: str
    check_filename: Callable[[str | None], None] | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        return (self.file_part,) + ((self.json_part,) if self.json_part else ())


@dataclass
class _State:
    form: Form
    upload: Sink
    limit: int
    headers: dict = field(default_factory=dict)
    header_field: bytes = b""
    header_value: bytes = b""
    part: str | None = None
    filename: str | None = None
    config: bytearray = field(default_factory=bytearray)
    pending: list = field(default_factory=list)
    pending_size: int = 0
    seen: set = field(default_factory=set)
    error: Exception | None = None


def check_filename(name: str | None) -> None:
    if not name:
        raise InvalidArgument("the checkpoint part needs a filename ending in .safetensors", field="checkpoint")
    if "/" in name or "\\" in name or "\x00" in name or name in (".", ".."):
        raise InvalidArgument(f"filename {name!r} must not contain path separators", field="checkpoint")
    if not name.lower().endswith(".safetensors"):
        raise InvalidArgument(f"filename {name!r}: only .safetensors checkpoints are accepted "
                              "(pickle .ckpt/.bin files are never loaded)", field="checkpoint")


def _callbacks(state: _State) -> Any:  # python-multipart's MultipartCallbacks (a TypedDict)
    def on_part_begin():
        state.headers, state.part, state.filename = {}, None, None

    def on_header_field(data, start, end):
        state.header_field += data[start:end]

    def on_header_value(data, start, end):
        state.header_value += data[start:end]

    def on_header_end():
        state.headers[state.header_field.decode("latin-1").lower()] = state.header_value
        state.header_field, state.header_value = b"", b""

    def on_headers_finished():
        _, params = parse_options_header(state.headers.get("content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        state.part, state.filename = name, filename.decode("utf-8", "replace") if filename is not None else None
        form = state.form
        if name not in form.parts:
            expected = " and ".join(repr(p) for p in form.parts)
            raise InvalidArgument(f"unexpected form field {name!r}; expected {expected}", field=name)
        if name in state.seen:
            raise InvalidArgument(f"form field {name!r} given twice", field=name)
        state.seen.add(name)
        if name == form.file_part and form.check_filename is not None:
            form.check_filename(state.filename)
        if name == form.file_part:
            state.upload.filename = state.filename

    def on_part_data(data, start, end):
        chunk, form = data[start:end], state.form
        if state.part == form.json_part:
            state.config += chunk
            if len(state.config) > MAX_CONFIG_BYTES:
                raise InvalidArgument(f"{form.json_part} is larger than {MAX_CONFIG_BYTES} bytes", field=form.json_part)
        elif state.part == form.file_part:
            if state.upload.size + state.pending_size + len(chunk) > state.limit:
                raise PayloadTooLarge(f"{form.file_part} is larger than the limit of {state.limit} bytes",
                                      field=form.file_part)
            state.pending.append(bytes(chunk))
            state.pending_size += len(chunk)

    return {"on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data}


CHECKPOINT_FORM = Form("POST /customizations", "checkpoint", "config", "max_upload_bytes", check_filename)
FILE_FORM = Form("POST /files", "file", None, "max_file_bytes")


class HashingSink:
    """Where a retried upload goes (its Idempotency-Key is bound): hashed and counted, never stored."""

    def __init__(self):
        self.sha256, self.size, self.filename = hashlib.sha256(), 0, None

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


async def receive_form(request: Request, upload: Sink, settings: Settings,
                       keep_alive: Callable[[], None] | None = None, form: Form = CHECKPOINT_FORM) -> bytes:
    """Stream the form's file part into `upload` (its filename on ``upload.filename``); return the raw bytes of
    its JSON part (``config``). Raises on any form problem. `keep_alive` is called (in the thread pool) every
    `KEEP_ALIVE_S` while the body streams."""
    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        parts = " and ".join(repr(p) for p in form.parts)
        raise UnsupportedMediaType(f"{form.route} takes multipart/form-data with {parts}")
    # a declared Content-Length over the limit was refused by `api.guard` before the body was read
    state = _State(form=form, upload=upload, limit=getattr(settings, form.limit))
    parser = MultipartParser(params[b"boundary"], _callbacks(state))
    last_beat = time.monotonic()
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if keep_alive is not None and time.monotonic() - last_beat > KEEP_ALIVE_S:
                await run_in_threadpool(keep_alive)
                last_beat = time.monotonic()
            if state.pending:
                data, state.pending, state.pending_size = b"".join(state.pending), [], 0
                await run_in_threadpool(upload.write, data)
        parser.finalize()
        if parser.state != MultipartState.END:  # the body stopped before its closing boundary: cut off
            raise BadRequest("malformed multipart body: it ends before its closing boundary")
    # the form's own refusals, the guard's (a stalled body: 408), storage errors (503 from their handler)
    except (ServiceError, HTTPException, *STORAGE_ERRORS):
        raise
    except Exception as exc:
        raise BadRequest(f"malformed multipart body: {exc}") from exc
    if state.pending:
        await run_in_threadpool(upload.write, b"".join(state.pending))
    for name in form.parts:
        if name not in state.seen:
            raise InvalidArgument(f"form field {name!r} is missing", field=name)
    if upload.size == 0:
        raise InvalidArgument(f"the {form.file_part} file is empty", field=form.file_part)
    return bytes(state.config)
