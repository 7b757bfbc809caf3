"""Uploaded input files (``POST /files``: reference videos and images) in the job store and in storage.

Layout: ``sm:file:<id>`` a hash, one JSON value per `FileRecord` field, and ``sm:owner:<o>:files`` the owner's
file ids by creation time; the object is ``files/<id>/source``. A record is written after its object and
deleted before it, so storage never holds an object a record names that is gone; an object left without a
record (the API died, or storage was down at the deletion) is swept by the collector. Records never expire
(as customizations): ``DELETE /files/{id}`` removes one. A generation queued with a file that is then deleted
fails with ``input_missing`` when its worker fetches it.
"""

from __future__ import annotations

import json

from common import storage as keys
from common.deletion import delete_objects
from common.errors import NotFound
from common.jobstore import PREFIX, JobStore, decode_fields, encode_fields
from common.schemas import FileRecord
from common.storage import Storage

# KEYS: the file, the owner's file listing. ARGV: owner (JSON), file id.
_DELETE_FILE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


def file_key(file_id: str) -> str:
    return f"{PREFIX}file:{file_id}"


def _listing(owner: str) -> str:
    return JobStore.owner_key(owner, "files")


def create_file(store: JobStore, record: FileRecord) -> None:
    pipe = store.redis.pipeline(transaction=True)
    pipe.hset(file_key(record.id), mapping=encode_fields(record))
    pipe.zadd(_listing(record.owner), {record.id: record.created_at.timestamp()})
    pipe.execute()


def get_file(store: JobStore, file_id: str, owner: str, field: str = "file_id") -> FileRecord:
    """The caller's file; `NotFound` (naming `field`) for an unknown one or another key's (indistinguishable)."""
    raw = store.redis.hgetall(file_key(file_id))
    record = FileRecord.model_validate(decode_fields(raw)) if raw else None
    if record is None or record.owner != owner:
        raise NotFound(f"no file {file_id!r}", field=field)
    return record


def delete_file(store: JobStore, storage: Storage, record: FileRecord) -> None:
    """Its record (atomically, if still the owner's), then its object (best effort: the collector sweeps)."""
    deleted = store.redis.register_script(_DELETE_FILE)(
        keys=[file_key(record.id), _listing(record.owner)], args=[json.dumps(record.owner), record.id])
    if not deleted:
        raise NotFound(f"no file {record.id!r}", field="file_id")
    delete_objects(storage, keys.file_prefix(record.id))
