"""One error envelope for everything: ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import logging

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from common.errors import ServiceError, Unauthorized
from common.storage import STORAGE_ERRORS

log = logging.getLogger("stillmoving.api")
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_argument"}


def envelope(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
    body = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _field(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


async def service_error(_: Request, exc: ServiceError):
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return envelope(exc.status, exc.code, exc.message, exc.field, headers)


async def validation_error(_: Request, exc: RequestValidationError):
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return envelope(400, "bad_request", "the request needs a JSON body")
    if first.get("type") == "json_invalid":
        return envelope(400, "malformed_json", f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    field = _field(first.get("loc", ()))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return envelope(422, "invalid_argument", f"{field}: {message}" if field else message, field)


async def http_error(_: Request, exc: HTTPException):
    return envelope(exc.status_code, HTTP_CODES.get(exc.status_code, "error"), str(exc.detail),
                    headers=getattr(exc, "headers", None))


async def redis_error(_: Request, exc: Exception):
    log.warning("redis error: %s", type(exc).__name__)
    return envelope(503, "unavailable", "the job store is unreachable; retry later", headers={"Retry-After": "5"})


async def storage_error(_: Request, exc: Exception):
    log.warning("storage error: %s", type(exc).__name__)
    return envelope(503, "unavailable", "storage is unreachable; retry later", headers={"Retry-After": "5"})


async def unexpected_error(_: Request, exc: Exception):
    log.exception("unhandled error", exc_info=exc)
    return envelope(500, "internal", "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(redis.RedisError, redis_error)
    for storage_exception in STORAGE_ERRORS:
        app.add_exception_handler(storage_exception, storage_error)
    app.add_exception_handler(Exception, unexpected_error)
