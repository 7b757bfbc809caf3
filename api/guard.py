"""An ASGI middleware in front of the app: the API key and the body size are checked before any byte
of a body is read (FastAPI parses a JSON body before it resolves the auth dependency: an unauthenticated
1 GB body used to be parsed, 2.9 GB peak, before its 401); a body that stalls is cut off, and a key streams
a bounded number of uploads at once (what the proxy enforces, here too for the direct path)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException

from api.auth import UNAUTHORIZED, owner_for
from common import logs
from common.settings import Settings

PUBLIC = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
PUBLIC_PREFIXES = ("/ui",)
MULTIPART_OVERHEAD = 1024 * 1024  # form boundaries, part headers and the config part around a checkpoint
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


async def _refuse(send, status: int, code: str, message: str, headers: dict | None = None,
                  field: str | None = None) -> None:
    """Answer with the JSON error envelope without reading the request's body."""
    error = {"code": code, "message": message} | ({"field": field} if field else {})
    body = json.dumps({"error": error}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """401 without a valid key and 413 past the body limit, both before the app reads the body: JSON bodies
    up to `max_json_bytes`, multipart uploads up to the upload limit (declared length here; streamed bytes
    in `api.upload`, and for JSON in `receive` below); 408 when the next piece of a body takes longer than
    `api_body_timeout_s`; 429 past `uploads_per_key` uploads streaming at once."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings
        self.uploads: Counter[str] = Counter()  # uploads streaming now, per key (this process)
        storage = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        media = _origin(storage) if storage else "https://*.amazonaws.com"
        # the page loads its own script and style only; videos and stills come from presigned storage URLs
        self.page_headers = [(b"content-security-policy",
                              f"default-src 'self'; img-src 'self' data: blob: {media}; media-src 'self' blob: "
                              f"{media}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'".encode())]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = self._with_headers(send, self.page_headers if scope["path"].startswith("/ui") else [])
        if scope["path"] in PUBLIC or scope["path"].startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        owner = owner_for(headers.get("authorization"), self.settings.api_keys)
        if owner is None:
            return await _refuse(send, 401, "unauthorized", UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        logs.bind(owner=owner)  # the tenant id (a hash of the key) in the request's log records
        multipart = headers.get("content-type", "").lower().startswith("multipart/")
        files = scope["path"] == "/files"  # an input video, else a checkpoint
        upload_limit = self.settings.max_file_bytes if files else self.settings.max_upload_bytes
        limit = upload_limit + MULTIPART_OVERHEAD if multipart else self.settings.max_json_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            field = ("file" if files else "checkpoint") if multipart else None
            return await _refuse(send, 413, "payload_too_large", f"request body of {declared} bytes is over the "
                                 f"limit of {limit} bytes", field=field)
        receive = self._timed(receive)
        if multipart:  # `api.upload` counts the streamed bytes of an upload as they arrive
            if self.uploads[owner] >= self.settings.uploads_per_key:
                return await _refuse(send, 429, "too_many_uploads", f"this key already streams "
                                     f"{self.uploads[owner]} uploads (limit {self.settings.uploads_per_key}); "
                                     "retry when one has finished", {"Retry-After": "5"})
            self.uploads[owner] += 1
            try:
                return await self.app(scope, receive, send)
            finally:
                self.uploads[owner] -= 1
                if not self.uploads[owner]:
                    del self.uploads[owner]
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise HTTPException(413, f"request body is over the limit of {limit} bytes")
            return message

        return await self.app(scope, counted, send)

    def _timed(self, receive):
        """`receive` that waits at most `api_body_timeout_s` for each piece of the body (not after it: then
        the app waits for the client's disconnect, as long as its response takes)."""
        timeout, whole = self.settings.api_body_timeout_s, False

        async def timed():
            nonlocal whole
            if whole:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                # an HTTPException: FastAPI lets only these through its body parsing (others become a 400)
                raise HTTPException(408, f"the request body stalled: no data for {timeout:g} s") from None
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        return timed

    @staticmethod
    def _with_headers(send, extra: list):
        """Every response: no MIME sniffing, no framing, no referrer; the page: its CSP too."""
        async def sending(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS + extra}
            await send(message)
        return sending


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
