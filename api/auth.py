"""Bearer keys: which tenant a request's ``Authorization`` header names, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac

UNAUTHORIZED = "missing or invalid API key (expected 'Authorization: Bearer <key>')"


def owner_of(key: str) -> str:
    """The tenant id of an API key: a hash, so the key itself is never stored or logged."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def owner_for(authorization: str | None, keys: list[str]) -> str | None:
    """The tenant of ``Bearer <key>`` when the key is one of `keys`, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    matched = False
    for key in keys:  # no early exit: time does not depend on which key matched
        matched |= hmac.compare_digest(token.encode(), key.encode())
    return owner_of(token) if scheme.lower() == "bearer" and token and matched else None
