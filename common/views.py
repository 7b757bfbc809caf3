"""Records → responses: result storage keys become presigned URLs, queued jobs get their position. Shared by the
API's routes and the worker's webhook deliveries (the same job body as ``GET /jobs/{id}``)."""

from __future__ import annotations

from common.jobstore import JobStore
from common.schemas import CustomizationRecord, CustomizationView, JobRecord, JobView
from common.storage import Storage, customization_artifact_keys


def job_view(job: JobRecord, store: JobStore, storage: Storage) -> JobView:
    return JobView(
        id=job.id, kind=job.kind, status=job.status, stage=job.stage, progress=round(job.progress, 4),
        queue_position=store.queue_position(job.id) if job.status == "queued" else None,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at, error=job.error,
        customization_id=job.customization_id, attempts=job.attempts, params=job.params,
        eta_s=job.eta_s if job.status == "running" else None,
        result=_result(job, storage) if job.status == "succeeded" and job.result else None,
    )


def _result(job: JobRecord, storage: Storage) -> dict:
    stored = dict(job.result or {})
    if job.kind in ("generate", "evaluate"):  # a generation's control_key: the conditioning frames used
        return _presigned(stored, storage)
    return {"customization_id": stored.get("customization_id"), **_artifact_urls(stored, storage),
            "metrics": stored.get("metrics")}


def _presigned(stored: dict, storage: Storage) -> dict:
    """`stored` with each ``<name>_key`` (also in a list of rows) as a presigned ``<name>_url``."""
    out: dict = {}
    for name, value in stored.items():
        if name.endswith("_key"):
            if value:
                out[name.removesuffix("_key") + "_url"] = storage.presign(value)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            out[name] = [_presigned(v, storage) for v in value]
        else:
            out[name] = value
    return out


def _artifact_urls(stored: dict, storage: Storage) -> dict:
    """Presigned URLs of a customization's `customization_artifact_keys` (in a job's result or from its manifest)."""
    return {"preview_url": storage.presign(stored["preview_key"]) if stored.get("preview_key") else None,
            "preview_poster_url": storage.presign(stored["preview_poster_key"]) if stored.get("preview_poster_key")
            else None,
            "image_urls": [storage.presign(k) for k in stored.get("image_keys", [])]}


def customization_view(record: CustomizationRecord, storage: Storage) -> CustomizationView:
    urls = {}
    if record.status == "ready" and record.manifest:
        urls = _artifact_urls(customization_artifact_keys(record.id, record.manifest), storage)
    return CustomizationView(
        id=record.id, name=record.name, status=record.status, job_id=record.job_id, base_model=record.base_model,
        checkpoint={"sha256": record.checkpoint_sha256, "format": record.checkpoint_format}, config=record.config,
        created_at=record.created_at, finished_at=record.finished_at, error=record.error, manifest=record.manifest,
        preview_url=urls.get("preview_url"), image_urls=urls.get("image_urls", []),
    )
