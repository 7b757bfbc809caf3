"""The service's exceptions: one base class with an HTTP status and a stable code, a few subclasses.

The API renders every one of them as ``{"error": {"code", "message", "field"?}}``.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service raises on purpose."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class CustomizationFailed(Conflict):
    """A generation's customization failed, was canceled or is gone: it cannot be used."""

    code = "customization_failed"


class InvalidArgument(ServiceError):
    status, code = 422, "invalid_argument"


class InvalidCheckpoint(InvalidArgument):
    code = "invalid_checkpoint"


class TooManyRequests(ServiceError):
    status, code = 429, "too_many_requests"

    def __init__(self, message: str, *, retry_after: int | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServiceUnavailable(ServiceError):
    status, code = 503, "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class StorageUnavailable(ServiceUnavailable):
    """Object storage stayed unreachable through every retry of one operation (the worker's jobs fail with it)."""

    code = "storage_unavailable"
