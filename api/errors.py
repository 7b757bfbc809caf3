"""One error envelope for everything: ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from common.errors import BadRequest, InvalidArgument, ServiceError, Unauthorized
from common.storage import STORAGE_ERRORS

log = logging.getLogger("stillmoving.api")
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              408: "request_timeout", 413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_argument"}
ERROR_STATUSES = (400, 401, 404, 408, 409, 413, 415, 422, 429, 503)  # the statuses the API documents
LOCATIONS = ("body", "query", "path", "header")  # where FastAPI found a value (not part of its field's name)


def envelope(status: int, code: str, message: str, field: str | None = None, headers: dict | None = None):
    body = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


async def service_error(_: Request, exc: ServiceError):
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if isinstance(exc, Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    return envelope(exc.status, exc.code, exc.message, exc.field, headers)


def reshape_validation_errors(errors: Sequence[Any], root: str | None = None) -> ServiceError:
    """Pydantic's validation errors as one service error: the first, named by its field's dotted path, and how
    many more there are. `root` names a part validated on its own (the upload's ``config``): its paths start
    there, and invalid JSON in it is a 422 on that field rather than the request's 400."""
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return BadRequest("the request needs a JSON body")
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        if root is None:
            return BadRequest(f"request body is not valid JSON: {reason}", code="malformed_json")
        return InvalidArgument(f"{root} is not valid JSON: {reason}", field=root)
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    loc = [str(p) for p in first.get("loc", ())]
    if root is None and loc[:1] and loc[0] in LOCATIONS:  # FastAPI's loc starts with where the value was
        loc = loc[1:]
    field = ".".join(([root] if root else []) + loc) or None
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problems)"
    return InvalidArgument(f"{field}: {message}" if field else message, field=field)


async def validation_error(request: Request, exc: RequestValidationError):
    return await service_error(request, reshape_validation_errors(exc.errors()))


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
    handlers: list[tuple[type[Exception], Callable[..., Any]]] = [
        (ServiceError, service_error), (RequestValidationError, validation_error), (HTTPException, http_error),
        (redis.RedisError, redis_error), *((e, storage_error) for e in STORAGE_ERRORS), (Exception, unexpected_error)]
    for exception, handler in handlers:
        app.add_exception_handler(exception, handler)
