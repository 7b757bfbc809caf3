"""Job events: one bounded Redis Stream per job, the one source of its log, its live status (Server-Sent
Events) and, later, its webhooks.

An entry has one field, ``event``: JSON with a ``type`` and that type's fields:

- ``status``: ``status`` (and ``stage``, ``attempt``, ``worker``, ``error`` when they change with it): the job was
  created, started on a worker, re-queued, or ended; written by the job store's scripts, atomically with the change.
- ``stage``: the running job entered ``stage`` (with its progress); written through the lease-checked heartbeat.
- ``progress``: ``stage``, ``progress``, ``step``, ``steps``, ``eta_s``; at most one per `PROGRESS_EVENT_STEP` of
  the job's progress (plus one at each stage's end), so a long job cannot push its log out of the bounded stream.
- ``log``: ``level`` (``info`` or ``warning``) and, for a training loss, ``stage``, ``step``, ``steps``, ``loss``.

Every type but ``progress`` carries a ``message`` and makes the job's log. The entry's stream id (``<ms>-<n>``)
orders a job's events and is their SSE ``id:``: a client resumes after the last one it saw (``Last-Event-ID``).
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from common.schemas import TERMINAL

PROGRESS_EVENT_STEP = 0.005  # the job's progress (0..1) between two progress events: 200 at most per attempt
LOG_TYPES = ("status", "stage", "log")
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def encode(event: dict[str, Any]) -> str:
    """An event as the JSON its stream entry holds (None fields left out)."""
    return json.dumps({k: v for k, v in event.items() if v is not None})


def status_event(fields: dict[str, Any], note: str | None = None) -> dict[str, Any] | None:
    """The event of a job store change with `fields` (a status change or a cancel request); None for others."""
    status = fields.get("status")
    if status is None:
        return log_event("cancel requested") if fields.get("cancel_requested") else None
    error = fields.get("error")
    if isinstance(error, BaseModel):
        error = error.model_dump(exclude_none=True)
    attempt, worker = fields.get("attempts"), fields.get("worker")
    message = status + (f" on {worker}" if worker else "") + (f" (attempt {attempt})" if attempt else "")
    message += f": {error['code']}: {error['message']}" if error else ""
    message += f" ({note})" if note else ""
    return {"type": "status", "status": status, "stage": fields.get("stage"), "attempt": attempt, "worker": worker,
            "error": error, "message": message}


def stage_event(stage: str, message: str | None = None) -> dict[str, Any]:
    """The event of a job entering `stage`."""
    return {"type": "stage", "stage": stage, "message": message or f"stage {stage}"}


def log_event(message: str, level: str = "info", **fields: Any) -> dict[str, Any]:
    return {"type": "log", "level": level, "message": message, **fields}


def decode(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """A stream entry as an event with its ``id`` and ``time`` (the entry id's milliseconds)."""
    event = json.loads(fields["event"])
    when = datetime.fromtimestamp(int(entry_id.split("-")[0]) / 1000, timezone.utc)
    return {"id": entry_id, "time": when.isoformat().replace("+00:00", "Z"), **event}


def is_terminal(event: dict[str, Any]) -> bool:
    return event.get("type") == "status" and event.get("status") in TERMINAL
