"""Verify a stillmoving webhook delivery on the receiving side (Standard Webhooks signatures).

    from client.webhooks import verify, WebhookVerificationError
    job = verify(secret, request_body_bytes, request_headers)   # the job, as GET /jobs/{id} shows it

`secret` is the key's (``GET /webhooks/secret``, ``whsec_...``). The signature is checked in constant time
over ``webhook-id.webhook-timestamp.body``, and a timestamp more than `tolerance_s` from now is refused
(a replayed delivery); ``webhook-id`` is the same for every retry of one event, so a receiver can de-duplicate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _LibraryError

TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """The delivery is not signed with this secret, is malformed, or its timestamp is too old or new."""


def verify(secret: str, body: bytes | str, headers: Mapping[str, str], tolerance_s: float = TOLERANCE_S) -> Any:
    """The delivery's JSON body once its signature and timestamp check out; `WebhookVerificationError` else."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = float(lowered.get("webhook-timestamp", ""))
    except ValueError:
        raise WebhookVerificationError("missing or malformed webhook-timestamp") from None
    if abs(time.time() - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"webhook-timestamp is more than {tolerance_s:g} s from now")
    try:
        Webhook(secret).verify(body, lowered, json_parse=False)
    except (_LibraryError, ValueError, TypeError) as exc:  # a malformed signature list raises ValueError
        raise WebhookVerificationError(str(exc) or type(exc).__name__) from None
    return json.loads(body)


def event_of(headers: Mapping[str, str]) -> str | None:
    """Which event a delivery is: start, progress or completed."""
    return {k.lower(): v for k, v in headers.items()}.get("stillmoving-event")
