"""A thin typed wrapper over the HTTP API; every non-2xx answer becomes an `ApiError`."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "canceled")
STATE = ("status", "stage", "progress", "queue_position", "eta_s")  # what status events update of a job


def iter_sse(lines: Iterable[str]) -> Iterator[dict]:
    """Server-Sent Events from a response's lines: ``{"id"?, "event"?, "data"? (JSON-decoded), "comment"?}``."""
    current: dict = {}
    for line in lines:
        if not line:
            if current:
                yield current
            current = {}
        elif line.startswith(":"):
            current["comment"] = line[1:].strip()
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            current[name] = json.loads(value) if name == "data" else value


class ApiError(Exception):
    """The server's error envelope (or a transport failure) as an exception."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{message} ({code}{', field ' + field if field else ''}; HTTP {status})")
        self.status, self.code, self.message, self.field = status, code, message, field


class _ProgressReader:
    """File wrapper that reports bytes read, so an upload can drive a progress bar."""

    def __init__(self, handle, on_read: Callable[[int], None]):
        self._handle, self._on_read = handle, on_read

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._on_read(len(chunk))
        return chunk

    def __getattr__(self, name):
        return getattr(self._handle, name)


@dataclass
class Client:
    """stillmoving API client. URL and key default to STILLMOVING_URL / STILLMOVING_API_KEY."""

    url: str | None = None
    api_key: str | None = None
    timeout: float = 60.0

    def __post_init__(self):
        self.url = (self.url or os.environ.get("STILLMOVING_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = self.api_key or os.environ.get("STILLMOVING_API_KEY") or ""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout)

    def _check(self, response: httpx.Response) -> dict:
        if response.is_success:
            return response.json() if response.content else {}
        try:
            err = response.json()["error"]
            raise ApiError(response.status_code, err.get("code", "error"), err.get("message", ""), err.get("field"))
        except (ValueError, KeyError, TypeError):
            raise ApiError(response.status_code, "http_error", response.text[:300] or response.reason_phrase) from None

    def _request(self, method: str, path: str, **kwargs) -> dict:
        try:
            return self._check(self._http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.url}: {exc}") from exc

    def _page(self, path: str, limit: int, cursor: str | None) -> dict:
        """One page of a listing, newest first: ``{items, next_cursor}`` (pass that cursor for the next)."""
        return self._request("GET", path, params={"limit": limit} | ({"cursor": cursor} if cursor else {}))

    def customize(self, checkpoint: Path, config: dict, on_bytes: Callable[[int], None] | None = None,
                  idempotency_key: str | None = None) -> dict:
        """Upload a checkpoint with its config; returns ``{job_id, customization_id, status}``."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with open(checkpoint, "rb") as handle:
            body = _ProgressReader(handle, on_bytes or (lambda n: None))
            files = {"checkpoint": (Path(checkpoint).name, body, "application/octet-stream")}
            return self._request("POST", "/customizations", files=files, data={"config": json.dumps(config)},
                                 headers=headers, timeout=None)

    def upload_file(self, path: Path, on_bytes: Callable[[int], None] | None = None,
                    idempotency_key: str | None = None) -> dict:
        """Upload a reference video or image (``POST /files``); returns the file as the server probed it."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        with open(path, "rb") as handle:
            body = _ProgressReader(handle, on_bytes or (lambda n: None))
            return self._request("POST", "/files", files={"file": (Path(path).name, body, "application/octet-stream")},
                                 headers=headers, timeout=None)

    def files(self, limit: int = 20, cursor: str | None = None) -> dict:
        return self._page("/files", limit, cursor)

    def file(self, file_id: str) -> dict:
        return self._request("GET", f"/files/{file_id}")

    def delete_file(self, file_id: str) -> None:
        self._request("DELETE", f"/files/{file_id}")

    def generate(self, request: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/generate", json=request, headers=headers)

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/jobs/{job_id}")

    def jobs(self, limit: int = 20, cursor: str | None = None) -> dict:
        return self._page("/jobs", limit, cursor)

    def cancel(self, job_id: str) -> dict:
        return self._request("POST", f"/jobs/{job_id}/cancel")

    def customization(self, customization_id: str) -> dict:
        return self._request("GET", f"/customizations/{customization_id}")

    def customizations(self, limit: int = 20, cursor: str | None = None) -> dict:
        return self._page("/customizations", limit, cursor)

    def export(self, customization_id: str, fmt: str, include_checkpoint: bool = False) -> dict:
        """``GET /customizations/{id}/export``: the presigned URL of one export, its filename, size and sha256."""
        params = {"format": fmt, **({"include_checkpoint": "true"} if include_checkpoint else {})}
        return self._request("GET", f"/customizations/{customization_id}/export", params=params)

    def wait(self, job_id: str, on_update: Callable[[dict], None] | None = None, poll_s: float = 0.5,
             timeout_s: float | None = None) -> dict:
        """Follow a job until it is terminal, from its live status stream (polling if the stream fails);
        returns its final record."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        job = self.job(job_id)
        if job["status"] not in TERMINAL:
            try:
                self._follow(job, on_update or (lambda job: None), deadline)
            except (httpx.HTTPError, ValueError, KeyError):  # the stream broke: polling from here
                pass
        return self._poll(job_id, on_update, poll_s, deadline)

    def _follow(self, job: dict, on_update: Callable[[dict], None], deadline: float | None) -> None:
        """Apply the job's status events (``GET /jobs/{id}/events``) to `job` until it ends or the stream does."""
        with self._http.stream("GET", f"/jobs/{job['id']}/events") as response:
            if not response.is_success:
                return
            for event in iter_sse(response.iter_lines()):
                data = event.get("data")
                if isinstance(data, dict) and data.get("type") != "log":
                    job.update({k: data[k] for k in STATE if k in data})
                    if data.get("status") and data["status"] != "queued":
                        job["queue_position"] = None
                    on_update(job)
                    if job["status"] in TERMINAL:
                        return
                if deadline is not None and time.monotonic() > deadline:
                    return

    def _poll(self, job_id: str, on_update: Callable[[dict], None] | None, poll_s: float,
              deadline: float | None) -> dict:
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(0, "timeout", f"job {job_id} not finished in the time given")
            time.sleep(poll_s)

    def download(self, url: str, path: Path) -> Path:
        """Fetch a (presigned) result URL to `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with httpx.stream("GET", url, timeout=self.timeout) as response:
                if not response.is_success:
                    raise ApiError(response.status_code, "download_failed", f"GET {url} answered {response.status_code}")
                with open(path, "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"cannot download {url}: {exc}") from exc
        return path
