"""Logging for the API and the worker: one JSON object per line, each carrying the context it was written in.

The context is a dict in a context variable: the API's request middleware opens one per request (its
``request_id``), the auth check adds ``owner`` (the tenant id: a hash of the key, never the key) and the enqueue
the ``job_id``; the worker opens one per task (the message's ``request_id``) and one per job run (the job's
``job_id``, ``owner`` and the ``request_id`` of the request that created it, from the job record). Threads a job
starts copy it (`contextvars.copy_context`). A record also names the trace and span it was written in, when
tracing is on (`common.tracing`), so logs and traces join.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

CONTEXT_FIELDS = ("request_id", "job_id", "owner")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what an incoming X-Request-ID may be (else a new one)
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("stillmoving_log_context",
                                                                                 default=None)


def request_id(incoming: str | None) -> str:
    """The request's id: the client's ``X-Request-ID`` when it is a sane token, else a new one."""
    return incoming if incoming and REQUEST_ID.match(incoming) else uuid.uuid4().hex


@contextmanager
def context(**fields: Any) -> Iterator[dict[str, Any]]:
    """A new log context (the enclosing one's fields, then `fields`) for the code inside."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield _context.get() or {}
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add `fields` to the current context in place (seen by the code that opened it: the request middleware's
    access line gets the owner the auth check found); nothing outside a context."""
    current = _context.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def current(name: str) -> Any:
    return (_context.get() or {}).get(name)


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", request_id?, job_id?, owner?, trace_id?, span_id?, exception?}``
    plus a record's ``extra`` fields that are JSON-safe."""

    RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in (_context.get() or {}).items() if k in CONTEXT_FIELDS})
        for key, value in vars(record).items():
            if key not in self.RESERVED and key not in out and isinstance(value, (str, int, float, bool)):
                out[key] = value
        out.update(_trace_ids())
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _trace_ids() -> dict[str, str]:
    """The current span's ids (W3C hex) when a recording span is current; none otherwise."""
    if "opentelemetry.trace" not in sys.modules:
        return {}
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {"trace_id": f"{span_context.trace_id:032x}", "span_id": f"{span_context.span_id:016x}"}


def setup(level: str = "INFO", fmt: str = "json") -> None:
    """The process's logging: one handler on the root logger, to stderr, JSON lines (or plain text for a
    person at a terminal); every library's logger propagates to it. Called again, it replaces its handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "stillmoving", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.stillmoving = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # a library's warnings.warn is a record too, not a bare line on stderr

