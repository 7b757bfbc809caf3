"""Webhooks: where a URL may lead, the keys' signing secrets, a job's delivery state and its attempts, in Redis.

A job with a ``webhook`` is registered by the API before it is created (`register`); the deliverer
(`worker.webhooks`) reads the job's event stream (`common.events`) after the position stored here, sends the
events the job asked for, in order, one at a time, and advances the position only once an event was delivered
(or given up): at least once, in order. Keys:

- ``sm:webhooks:due``: zset of registered jobs, scored by when the deliverer should look at them next;
- ``sm:job:<id>:webhook``: hash ``url``, ``events`` (JSON), ``owner``, ``registered_at``, ``cursor`` (the
  last stream id handled), ``tries`` / ``failing_since`` (of the event being retried), ``progress_ms``;
- ``sm:job:<id>:webhook:lease``: the token of the deliverer that holds the job's deliveries;
- ``sm:job:<id>:webhooks``: list of attempts (JSON, oldest first, the newest `webhook_attempts_kept`);
- ``sm:owner:<owner>:webhook-secret``: the key's secret, ``whsec_`` + base64 of 24 random bytes.

Signatures follow Standard Webhooks (the ``standardwebhooks`` package): ``v1,`` + base64 of HMAC-SHA256 over
``<webhook-id>.<webhook-timestamp>.<body>`` with the secret's bytes.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import socket
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import SplitResult, urlsplit

import redis
from standardwebhooks.webhooks import Webhook

from common.errors import InvalidArgument
from common.job_metrics import METRICS_KEY
from common.jobstore import PREFIX, JobStore

DUE_KEY = PREFIX + "webhooks:due"
METADATA_ADDRESSES = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
DEFAULT_PORTS = {"http": 80, "https": 443}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(InvalidArgument):
    """A webhook URL that is not http(s), does not resolve, or leads to an address webhooks may not reach."""

    code = "webhook_refused"


# ---- where a URL may lead ---------------------------------------------------------------------------
def _kind(ip: IPAddress) -> str | None:
    """Why webhooks may not reach `ip` ("metadata", "loopback", ...); None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_loopback or ip.is_unspecified:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    return None if ip.is_global and not ip.is_multicast else "non-public"


def resolve(url: str, allow_private: bool, field: str = "webhook") -> tuple[SplitResult, list[str]]:
    """The URL's parts and the addresses its host resolves to, every one checked: `WebhookRefused` naming
    `field` if any is one webhooks may not reach (a metadata address never; loopback, link-local, private and
    other non-public ones unless `allow_private`). Connect to one of the addresses returned, not to the name."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise WebhookRefused(f"webhook {url!r}: only http and https URLs with a host are delivered", field=field)
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (ValueError, UnicodeError, socket.gaierror, OSError) as exc:
        raise WebhookRefused(f"webhook host {parts.hostname!r} does not resolve ({exc})", field=field) from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    for address in addresses:
        kind = _kind(ipaddress.ip_address(address))
        if kind == "metadata" or (kind and not allow_private):
            raise WebhookRefused(f"webhook host {parts.hostname!r} resolves to {address}, a {kind} address; "
                                 f"webhooks go to public addresses only", field=field)
    if not addresses:
        raise WebhookRefused(f"webhook host {parts.hostname!r} has no address", field=field)
    return parts, addresses


# ---- signing ------------------------------------------------------------------------------------------
def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header of `body` sent as `webhook_id` at `timestamp` (Unix seconds)."""
    return Webhook(secret).sign(webhook_id, datetime.fromtimestamp(timestamp, timezone.utc), body)


def signed_headers(secret: str, webhook_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body)}


# ---- Redis --------------------------------------------------------------------------------------------
_ADVANCE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'cursor', ARGV[2], 'tries', 0, 'failing_since', '')
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'progress_ms', ARGV[3]) end
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WebhookStore:
    """The webhook keys of one Redis (a `JobStore`'s connection)."""

    def __init__(self, store: JobStore, attempts_kept: int = 200, retention_s: int = 0):
        self.redis: redis.Redis = store.redis
        self.attempts_kept, self.retention_s = attempts_kept, retention_s
        self._advance = self.redis.register_script(_ADVANCE)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)

    @classmethod
    def from_settings(cls, store: JobStore, settings) -> "WebhookStore":
        return cls(store, settings.webhook_attempts_kept, settings.job_retention_s)

    @staticmethod
    def state_key(job_id: str) -> str:
        return JobStore.job_key(job_id) + ":webhook"

    @classmethod
    def lease_key(cls, job_id: str) -> str:
        return cls.state_key(job_id) + ":lease"

    @staticmethod
    def attempts_key(job_id: str) -> str:
        return JobStore.job_key(job_id) + ":webhooks"

    @staticmethod
    def secret_key(owner: str) -> str:
        return f"{PREFIX}owner:{owner}:webhook-secret"

    # secrets
    def secret(self, owner: str) -> str:
        """The key's signing secret, made on first use."""
        self.redis.set(self.secret_key(owner), new_secret(), nx=True)
        return self.redis.get(self.secret_key(owner))

    def rotate_secret(self, owner: str) -> str:
        secret = new_secret()
        self.redis.set(self.secret_key(owner), secret)
        return secret

    # registration and state
    def register(self, job_id: str, owner: str, url: str, events: list[str]) -> None:
        """Before the job is created: a job that then fails to be created is dropped by the deliverer."""
        pipe = self.redis.pipeline()
        pipe.hset(self.state_key(job_id), mapping={"url": url, "events": json.dumps(events), "owner": owner,
                                                   "registered_at": repr(time.time()), "cursor": ""})
        pipe.zadd(DUE_KEY, {job_id: time.time()})
        pipe.execute()

    def unregister(self, job_id: str) -> None:
        pipe = self.redis.pipeline()
        pipe.zrem(DUE_KEY, job_id)
        pipe.delete(self.state_key(job_id))
        pipe.execute()

    def state(self, job_id: str) -> dict[str, str]:
        return self.redis.hgetall(self.state_key(job_id))

    def due(self, limit: int = 100) -> list[str]:
        return self.redis.zrangebyscore(DUE_KEY, "-inf", repr(time.time()), start=0, num=limit)

    def schedule(self, job_id: str, delay_s: float) -> None:
        """Look at the job again in `delay_s` (only while it is registered)."""
        self.redis.zadd(DUE_KEY, {job_id: time.time() + delay_s}, xx=True)

    def failed(self, job_id: str, tries: int, failing_since: float) -> None:
        self.redis.hset(self.state_key(job_id), mapping={"tries": tries, "failing_since": repr(failing_since)})

    # the lease: one deliverer per job at a time
    def take_lease(self, job_id: str, token: str, lease_s: float) -> bool:
        return bool(self.redis.set(self.lease_key(job_id), token, nx=True, px=int(lease_s * 1000)))

    def renew_lease(self, job_id: str, token: str, lease_s: float) -> bool:
        return self._renew(keys=[self.lease_key(job_id)], args=[token, int(lease_s * 1000)]) == 1

    def release_lease(self, job_id: str, token: str) -> None:
        self._release(keys=[self.lease_key(job_id)], args=[token])

    def advance(self, job_id: str, token: str, cursor: str, lease_s: float, progress_ms: int | None = None) -> bool:
        """Mark events up to stream id `cursor` handled, if `token` still holds the lease."""
        return self._advance(keys=[self.state_key(job_id), self.lease_key(job_id)],
                             args=[token, cursor, "" if progress_ms is None else progress_ms,
                                   int(lease_s * 1000)]) == 1

    # attempts
    def record_attempt(self, job_id: str, attempt: dict[str, Any], outcome: str) -> None:
        """Keep the attempt and count it by its event and `outcome` (delivered, failed, given_up), atomically."""
        key = self.attempts_key(job_id)
        pipe = self.redis.pipeline()
        pipe.rpush(key, json.dumps(attempt))
        pipe.hincrby(METRICS_KEY, f"webhook|{attempt['event']}|{outcome}", 1)
        pipe.ltrim(key, -self.attempts_kept, -1)
        if self.retention_s:
            pipe.expire(key, self.retention_s)
        pipe.execute()

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.redis.lrange(self.attempts_key(job_id), 0, -1)]
