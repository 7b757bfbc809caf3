"""The webhook deliverer: a thread in every worker's main process (started on Celery's ``worker_ready``, like
the reaper) that sends each registered job's events to its webhook, outside any job's work.

Every `webhook_poll_s` it takes the jobs due (`common.webhooks`) whose lease it can get and hands each to a
small thread pool (`webhook_concurrency`): a hanging receiver holds one thread for at most `webhook_timeout_s`,
never a job, the pool process or another job's deliveries. A job's deliveries are in order: one event at a time,
the stored position advanced only after a 2xx (or once the event is given up after `webhook_retry_window_s`);
a failed event is retried with doubling backoff. A worker killed meanwhile loses its lease after
`webhook_lease_s` and another worker's deliverer goes on from the stored position: at least once.

Events sent: ``start`` (each ``running`` status event), ``progress`` (at most one per
`webhook_progress_interval_s` of event time), ``completed`` (the terminal status event); the body is the job
as ``GET /jobs/{id}`` shows it at delivery time, with the event in the ``stillmoving-event`` header.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlunsplit

import httpx
from celery import Celery
from celery.signals import worker_ready

from common.events import is_terminal
from common.jobstore import JobStore
from common.schemas import TERMINAL
from common.settings import Settings
from common.storage import Storage
from common.views import job_view
from common.webhooks import WebhookRefused, WebhookStore, resolve, signed_headers
from worker.background import Background

log = logging.getLogger("stillmoving.webhooks")
REGISTRATION_GRACE_S = 60.0  # a registered job whose record is missing this long after was never created


def event_kind(event: dict[str, Any]) -> str | None:
    """The webhook event of a job event: start, progress, completed, or None (not delivered)."""
    if event.get("type") == "progress":
        return "progress"
    if event.get("type") == "status":
        return "completed" if event.get("status") in TERMINAL else "start" if event.get("status") == "running" \
            else None
    return None


def post(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> int:
    """POST `body` to `url` at an address checked now (DNS may have changed since the submit), no redirects,
    bounded in time and in what is read back; the response's status code. Raises on a refused address or a
    failed connection."""
    parts, addresses = resolve(url, settings.webhook_allow_private)
    address = addresses[0]
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = urlunsplit((parts.scheme, f"[{address}]:{port}" if ":" in address else f"{address}:{port}",
                         parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    deadline = time.monotonic() + settings.webhook_timeout_s
    timeout = httpx.Timeout(settings.webhook_timeout_s, connect=min(3.0, settings.webhook_timeout_s))
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout) as client:
        request = client.build_request("POST", target, content=body, extensions=extensions,
                                       headers={**headers, "Host": parts.netloc.rpartition("@")[2],
                                                "Content-Type": "application/json",
                                                "User-Agent": "stillmoving-webhooks"})
        response = client.send(request, stream=True)
        try:
            read = 0
            for chunk in response.iter_raw():
                read += len(chunk)
                if read >= settings.webhook_max_response_bytes or time.monotonic() > deadline:
                    break
        finally:
            response.close()
    return response.status_code


class Deliverer(Background):
    name = "webhooks"

    def __init__(self, store: JobStore, storage: Storage, settings: Settings):
        super().__init__(settings.webhook_poll_s)
        self.store, self.storage, self.settings = store, storage, settings
        self.hooks = WebhookStore.from_settings(store, settings)
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="stillmoving-webhook")

    # ---- the loop ----
    def poll_once(self) -> list[str]:
        """Hand each due job whose lease this deliverer gets to the pool; the jobs handed."""
        handed = []
        for job_id in self.hooks.due():
            with self._lock:
                if job_id in self._busy or len(self._busy) >= self.settings.webhook_concurrency:
                    continue
                token = uuid.uuid4().hex
                if not self.hooks.take_lease(job_id, token, self.settings.webhook_lease_s):
                    continue
                self._busy.add(job_id)
            handed.append(job_id)
            self._pool.submit(self._serve, job_id, token)
        return handed

    def _serve(self, job_id: str, token: str) -> None:
        try:
            self.deliver(job_id, token)
        except Exception as exc:  # Redis or storage briefly down: the job is due again after a pause
            log.warning("webhook deliveries of %s: %s: %s", job_id, type(exc).__name__, exc)
            try:
                self.hooks.schedule(job_id, self.settings.webhook_backoff_s)
            except Exception:  # still down: the job stays due, the next pass retries
                pass
        finally:
            try:
                self.hooks.release_lease(job_id, token)
            finally:
                with self._lock:
                    self._busy.discard(job_id)

    def deliver(self, job_id: str, token: str) -> None:
        """Send the job's pending events in order while it has some; then schedule its next look."""
        poll = self.settings.webhook_poll_s
        while not self._stop.is_set():
            state = self.hooks.state(job_id)
            if not state:
                self.hooks.unregister(job_id)
                return
            job = self.store.get_job(job_id)
            if job is None:  # not created yet, never created, deleted or expired
                if time.time() - float(state["registered_at"]) > REGISTRATION_GRACE_S:
                    self.hooks.unregister(job_id)
                else:
                    self.hooks.schedule(job_id, poll)
                return
            pending = self.store.job_events(job_id, after=state.get("cursor") or None, count=50)
            if not pending:
                if job.status in TERMINAL:  # its end event was trimmed away; nothing more will come
                    self.hooks.unregister(job_id)
                else:
                    self.hooks.schedule(job_id, poll)
                return
            for event in pending:
                if not self._handle(job_id, token, state, event):
                    return

    def _handle(self, job_id: str, token: str, state: dict[str, str], event: dict[str, Any]) -> bool:
        """Deliver one event (or skip it); False when this pass over the job ends."""
        lease = self.settings.webhook_lease_s
        kind, ms = event_kind(event), int(event["id"].split("-")[0])
        wanted = kind in json.loads(state["events"])
        if kind == "progress" and wanted and state.get("progress_ms"):
            wanted = ms - int(state["progress_ms"]) >= self.settings.webhook_progress_interval_s * 1000
        if wanted and kind is not None:
            outcome = self._attempt(job_id, state, event, kind)
            if outcome == "retry":
                return False
        delivered_progress = ms if wanted and kind == "progress" else None
        if not self.hooks.advance(job_id, token, event["id"], lease, delivered_progress):
            return False  # the lease is another deliverer's now
        state.update(cursor=event["id"], tries="0", failing_since="")
        if delivered_progress is not None:
            state["progress_ms"] = str(delivered_progress)
        if is_terminal(event):
            self.hooks.unregister(job_id)
            return False
        return True

    def _attempt(self, job_id: str, state: dict[str, str], event: dict[str, Any], kind: str) -> str:
        """One attempt: "delivered", "given_up" (out of retry time) or "retry" (scheduled)."""
        job = self.store.get_job(job_id)
        if job is None:
            return "given_up"
        body = json.dumps(job_view(job, self.store, self.storage).model_dump(mode="json"), separators=(",", ":"))
        webhook_id = f"msg_{job_id}_{event['id']}"
        headers = signed_headers(self.hooks.secret(state["owner"]), webhook_id, body) | {"stillmoving-event": kind}
        tries = int(state.get("tries") or 0) + 1
        started, status_code, error = time.time(), None, None
        try:
            status_code = post(state["url"], body.encode(), headers, self.settings)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}" + (" (redirects are not followed)" if 300 <= status_code < 400 else "")
        except WebhookRefused as exc:
            error = exc.message
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        failing_since = float(state.get("failing_since") or started)
        give_up = error is not None and time.time() - failing_since >= self.settings.webhook_retry_window_s
        if give_up:
            error = f"{error}; given up after {tries} attempts in {time.time() - failing_since:.0f} s"
        self.hooks.record_attempt(job_id, {
            "webhook_id": webhook_id, "event": kind, "status": job.status,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f".{int(started % 1 * 1000):03d}Z",
            "url": state["url"], "attempt": tries, "status_code": status_code, "error": error,
            "delivered": error is None, "duration_ms": round((time.time() - started) * 1000, 1)},
            "delivered" if error is None else "given_up" if give_up else "failed")
        if error is None:
            return "delivered"
        if give_up:
            log.warning("webhook %s of job %s given up: %s", webhook_id, job_id, error)
            return "given_up"
        self.hooks.failed(job_id, tries, failing_since)
        backoff = min(self.settings.webhook_backoff_s * 2 ** (tries - 1), self.settings.webhook_backoff_max_s)
        self.hooks.schedule(job_id, backoff)
        return "retry"

    def run_pass(self) -> None:
        self.poll_once()

    def stop(self) -> None:
        super().stop()
        self._pool.shutdown(wait=False)


def install(app: Celery, settings: Settings) -> None:
    """Start a deliverer in the worker's main process once the worker is ready."""

    @worker_ready.connect(weak=False)
    def _start_deliverer(**_):
        Deliverer(JobStore.from_settings(settings), Storage(settings), settings).start()
        log.info("webhook deliverer started (every %gs, %d at once)", settings.webhook_poll_s,
                 settings.webhook_concurrency)
