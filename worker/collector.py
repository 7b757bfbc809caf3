"""The storage collector: deletes uploaded checkpoints no live customization needs (e.g. one refused with 429
at the atomic queue check after it was published, or one whose last customization was deleted), staging
objects an upload left behind (its API died between completing and moving it; the parts of unfinished uploads
go by the bucket's lifecycle rule), and the videos and customization artifacts whose record is gone: a
generation's record expired (`job_retention_s`) or a deletion's storage step failed (`common/deletion.py`), and
uploaded files (``files/``) whose record is gone.

Runs in the reaper's thread. Everything it deletes is older than a grace period (`gc_grace_s`), so an upload
being published or queued right now is never taken: a new upload of stored content renews the object's time.
"""

from __future__ import annotations

import logging
import time

from common import storage as keys
from common.files import file_key
from common.jobstore import JobStore
from common.storage import Storage

log = logging.getLogger("stillmoving.collector")
LIVE = ("queued", "training", "ready")


def collect(store: JobStore, storage: Storage, grace_s: float, clock: float | None = None) -> list[str]:
    """One sweep; returns the deleted keys. A checkpoint lives while any customization made from it is queued,
    training or ready, or ended (failed, canceled) less than `grace_s` ago."""
    clock = time.time() if clock is None else clock
    deleted = []
    for key, modified in storage.list_objects(keys.CHECKPOINTS_PREFIX):
        if clock - modified < grace_s:
            continue
        sha256 = keys.checkpoint_sha256(key)
        users = store.checkpoint_users(sha256)
        if any(c.status in LIVE or (c.finished_at and clock - c.finished_at.timestamp() < grace_s) for c in users):
            continue
        storage.delete(key)
        store.forget_checkpoint(sha256)
        deleted.append(key)
    for key, modified in storage.list_objects(keys.UPLOADS_PREFIX):
        if clock - modified >= grace_s:
            storage.delete(key)
            deleted.append(key)
    deleted += _unrecorded(store, storage, keys.VIDEOS_PREFIX, store.job_key, clock - grace_s)
    deleted += _unrecorded(store, storage, keys.CUSTOMIZATIONS_PREFIX, store.customization_key, clock - grace_s)
    deleted += _unrecorded(store, storage, keys.FILES_PREFIX, file_key, clock - grace_s)
    if deleted:
        log.info("collected %d objects: %s", len(deleted), ", ".join(deleted[:5]))
    return deleted


def _unrecorded(store: JobStore, storage: Storage, prefix: str, record_key, before: float) -> list[str]:
    """Delete the objects under ``<prefix><id>/`` written before `before` whose record (`record_key(id)`) is gone.
    A record is written before any of its objects (a file's just after: the grace period covers the gap) and a
    customization's or file's never expires, so none still named is taken."""
    old: dict[str, list[str]] = {}
    for key, modified in storage.list_objects(prefix):
        if modified <= before:
            old.setdefault(key[len(prefix):].split("/", 1)[0], []).append(key)
    ids = sorted(old)
    gone = [key for record_id, exists in zip(ids, store.exist([record_key(i) for i in ids])) if not exists
            for key in old[record_id]]
    storage.delete_many(gone)
    return gone
