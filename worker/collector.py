"""The storage collector: deletes uploaded checkpoints no live customization needs (e.g. one refused with 429
at the atomic queue check after it was published) and staging objects an upload left behind (its API died
between completing and moving it; the parts of unfinished uploads go by the bucket's lifecycle rule).

Runs in the reaper's thread. Everything it deletes is older than a grace period (`gc_grace_s`), so an upload
being published or queued right now is never taken: a new upload of stored content renews the object's time.
"""

from __future__ import annotations

import logging
import time

from common import storage as keys
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
    if deleted:
        log.info("collected %d objects: %s", len(deleted), ", ".join(deleted[:5]))
    return deleted
