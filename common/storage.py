"""S3-compatible object storage (boto3): key layout, streaming uploads with sha256, presigned URLs.

Key layout::

    checkpoints/<sha256>.safetensors      uploaded customized T2I checkpoints, stored once per content
    customizations/<id>/...               a customization's artifact (manifest.json written last)
    videos/<job_id>/...                   a generation's video and poster (and control frames)
    files/<file_id>/source                a POST /files upload (a reference video or image)
    motion-adapters/<key>/...             Motion Adapters shared by every customization on one base
    uploads/<uuid>                        staging of uploads in flight (moved or deleted when done)
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

import boto3
from boto3.exceptions import Boto3Error, RetriesExceededError, S3UploadFailedError
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from common.errors import ServiceUnavailable, StorageUnavailable
from common.settings import Settings

log = logging.getLogger("stillmoving.storage")
T = TypeVar("T")
# Error codes of a storage that is (re)starting, overloaded or briefly inconsistent: worth another try.
# Everything the storage client raises (boto3's own wrappers and botocore's errors): what callers catch as
# "storage failed", by type.
STORAGE_ERRORS = (BotoCoreError, ClientError, Boto3Error)
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling",
                   "ThrottlingException", "RequestLimitExceeded", "NoSuchBucket"}


CHECKPOINTS_PREFIX = "checkpoints/"
CHECKPOINT_SUFFIX = ".safetensors"
CUSTOMIZATIONS_PREFIX = "customizations/"
VIDEOS_PREFIX = "videos/"
FILES_PREFIX = "files/"
UPLOADS_PREFIX = "uploads/"
# by file suffix: what the worker's artifacts are served as
CONTENT_TYPES = {".mp4": "video/mp4", ".gif": "image/gif", ".png": "image/png", ".json": "application/json",
                 ".zip": "application/zip", ".safetensors": "application/octet-stream"}


def checkpoint_key(sha256: str) -> str:
    return f"{CHECKPOINTS_PREFIX}{sha256}{CHECKPOINT_SUFFIX}"


def checkpoint_sha256(key: str) -> str:
    """The content hash a `checkpoint_key` names."""
    return key.removeprefix(CHECKPOINTS_PREFIX).removesuffix(CHECKPOINT_SUFFIX)


def customization_prefix(customization_id: str) -> str:
    return f"{CUSTOMIZATIONS_PREFIX}{customization_id}/"


def customization_artifact_keys(customization_id: str, manifest: dict) -> dict:
    """Keys of the files a customization's manifest names for viewing: preview video and poster, stills."""
    prefix, preview = customization_prefix(customization_id), manifest.get("preview") or {}
    return {"preview_key": prefix + preview["video"] if preview.get("video") else None,
            "preview_poster_key": prefix + preview["poster"] if preview.get("poster") else None,
            "image_keys": [prefix + item["file"] for item in manifest.get("images", [])]}


def video_prefix(job_id: str) -> str:
    return f"{VIDEOS_PREFIX}{job_id}/"


def file_prefix(file_id: str) -> str:
    return f"{FILES_PREFIX}{file_id}/"


def file_key(file_id: str) -> str:
    return file_prefix(file_id) + "source"


def motion_adapter_prefix(key: str) -> str:
    return f"motion-adapters/{key}/"


def make_client(settings: Settings, endpoint_url: str | None = None, attempts: int = 4):
    """A boto3 S3 client for the configured endpoint (path-style addressing, SigV4, `attempts` per request)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      retries={"total_max_attempts": attempts, "mode": "standard"},
                      connect_timeout=min(5.0, settings.storage_timeout_s), read_timeout=settings.storage_timeout_s),
    )


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error may go away on its own (unreachable, timed out, 5xx, throttled)."""
    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        exc = exc.__context__  # boto3 wraps the upload's ClientError in its own exception
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or exc.response.get("Error", {}).get("Code") in TRANSIENT_CODES
    return isinstance(exc, (BotoConnectionError, HTTPClientError, RetriesExceededError))


def is_not_found(exc: BaseException) -> bool:
    """Whether a storage error says the object is not there."""
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey",
                                                                                          "NotFound")


class Storage:
    """The bucket of one deployment."""

    attempts = 4  # per request, boto3's own retries (the API's uploads: fail fast, the client retries)

    def __init__(self, settings: Settings):
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.client = make_client(settings, attempts=self.attempts)
        public = settings.s3_public_endpoint_url
        self.presign_client = make_client(settings, public) if public else self.client

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)
            # parts of uploads an API died in the middle of are storage no object shows: S3 drops them after a
            # day (MinIO does so itself: its stale_uploads_expiry is 24 h)
            self.client.put_bucket_lifecycle_configuration(Bucket=self.bucket, LifecycleConfiguration={"Rules": [{
                "ID": "abort-stale-uploads", "Status": "Enabled", "Filter": {"Prefix": UPLOADS_PREFIX},
                "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]})

    def ping(self) -> None:
        """Raise `ServiceUnavailable` unless the bucket is reachable."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except STORAGE_ERRORS as exc:
            raise ServiceUnavailable(f"storage unreachable: {type(exc).__name__}") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if is_not_found(exc):
                return False
            raise

    def put_file(self, path: Path, key: str, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type} if content_type else None
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra)

    def put_bytes(self, data: bytes, key: str, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get_file(self, key: str, path: Path) -> Path:
        """Download to `path` atomically (temp name then rename)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        self.client.download_file(self.bucket, key, str(tmp))
        tmp.replace(path)
        return path

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def list_keys(self, prefix: str) -> list[str]:
        return [key for key, _ in self.list_objects(prefix)]

    def list_objects(self, prefix: str) -> list[tuple[str, float]]:
        """(key, last-modified epoch seconds) of every object under `prefix`."""
        objects: list[tuple[str, float]] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            objects.extend((item["Key"], item["LastModified"].timestamp()) for item in page.get("Contents", []))
        return objects

    def touch(self, key: str) -> None:
        """Renew an object's last-modified time (a new upload of stored content: the collector's grace restarts)."""
        self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                                MetadataDirective="REPLACE")

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: list[str]) -> None:
        """Delete objects, up to 1,000 a request (S3's DeleteObjects); a key that is not there is no error."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            errors = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors")
            if errors:
                raise StorageUnavailable(f"storage refused to delete {errors[0].get('Key')}: {errors[0].get('Code')}")

    def presign(self, key: str, expires_s: int | None = None, filename: str | None = None) -> str:
        """A GET URL for one object, valid for `expires_s` (default: the presign_expiry_s setting); with
        `filename`, the download is saved under that name (Content-Disposition: attachment)."""
        params = {"Bucket": self.bucket, "Key": key}
        if filename is not None:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        return self.presign_client.generate_presigned_url("get_object", Params=params,
                                                          ExpiresIn=expires_s or self.settings.presign_expiry_s)

    def upload_stream(self) -> "StreamingUpload":
        return StreamingUpload(self)


class RetryingStorage(Storage):
    """The worker's storage: each operation retries transient failures with exponential backoff
    (``storage_retries``, ``storage_backoff_s`` doubling up to ``storage_backoff_max_s``), then raises
    `StorageUnavailable` naming the operation. Each call is idempotent (whole objects, fixed keys)."""

    attempts = 1  # one retry loop, this one, so that the retry window is what the settings say

    def __init__(self, settings: Settings, sleep: Callable[[float], None] = time.sleep):
        super().__init__(settings)
        self.sleep = sleep

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        retries, delay, attempts = self.settings.storage_retries, self.settings.storage_backoff_s, 0
        while True:
            try:
                return call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                attempts += 1
                reason = f"{type(exc).__name__}: {exc}"
                if attempts > retries:
                    raise StorageUnavailable(f"storage unavailable: {what} failed after {attempts} attempts "
                                             f"({reason})") from exc
                log.warning("storage: %s failed (%s); retry %d/%d in %.1f s", what, reason, attempts, retries, delay)
            self.sleep(delay)
            delay = min(delay * 2, self.settings.storage_backoff_max_s)

    def exists(self, key: str) -> bool:
        return self._retry(f"lookup of {key}", lambda: Storage.exists(self, key))

    def put_file(self, path: Path, key: str, content_type: str | None = None) -> None:
        self._retry(f"upload of {key}", lambda: Storage.put_file(self, path, key, content_type))

    def put_bytes(self, data: bytes, key: str, content_type: str = "application/octet-stream") -> None:
        self._retry(f"upload of {key}", lambda: Storage.put_bytes(self, data, key, content_type))

    def get_file(self, key: str, path: Path) -> Path:
        return self._retry(f"download of {key}", lambda: Storage.get_file(self, key, path))

    def get_bytes(self, key: str) -> bytes:
        return self._retry(f"download of {key}", lambda: Storage.get_bytes(self, key))

    def list_keys(self, prefix: str) -> list[str]:
        return self._retry(f"listing of {prefix}", lambda: Storage.list_keys(self, prefix))

    def delete(self, key: str) -> None:
        self._retry(f"deletion of {key}", lambda: Storage.delete(self, key))


class StreamingUpload:
    """Write bytes as they arrive into a staging object (S3 multipart), hashing and counting them.

    Memory holds at most one part. `commit(key)` moves the staging object to its final key (or drops
    it when the key already exists: identical uploads are stored once); `abort()` leaves nothing behind.
    """

    def __init__(self, storage: Storage):
        self.storage = storage
        self.client, self.bucket = storage.client, storage.bucket
        self.part_bytes = storage.settings.upload_part_bytes
        self.staging_key = f"{UPLOADS_PREFIX}{uuid.uuid4().hex}"
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.filename: str | None = None  # the form's filename, as the client sent it
        self.head = bytearray()  # the first bytes (safetensors header), bounded by head_limit
        self.head_limit = 8 + storage.settings.max_header_bytes
        self._buffer = bytearray()
        self._parts: list[dict] = []
        self._upload_id: str | None = None
        self._done = False

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)
        if len(self.head) < self.head_limit:
            self.head += data[: self.head_limit - len(self.head)]
        self._buffer += data
        while len(self._buffer) >= self.part_bytes:
            self._send_part(bytes(self._buffer[: self.part_bytes]))
            del self._buffer[: self.part_bytes]

    def _send_part(self, data: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.staging_key)["UploadId"]
        number = len(self._parts) + 1
        etag = self.client.upload_part(Bucket=self.bucket, Key=self.staging_key, UploadId=self._upload_id,
                                       PartNumber=number, Body=data)["ETag"]
        self._parts.append({"ETag": etag, "PartNumber": number})

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()

    def commit(self, key: str) -> bool:
        """Store the upload under `key`; return False when an identical object was already there."""
        if self.storage.exists(key):
            self.abort()
            self.storage.touch(key)
            return False
        if self._upload_id is None:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.staging_key, UploadId=self._upload_id,
                                                  MultipartUpload={"Parts": self._parts})
            self.client.copy({"Bucket": self.bucket, "Key": self.staging_key}, self.bucket, key)
            self.client.delete_object(Bucket=self.bucket, Key=self.staging_key)
        self._done = True
        return True

    def abort(self) -> None:
        """Drop everything written so far (idempotent, best effort)."""
        if self._done:
            return
        self._done = True
        self._buffer.clear()
        try:
            if self._upload_id is not None:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.staging_key, UploadId=self._upload_id)
            self.client.delete_object(Bucket=self.bucket, Key=self.staging_key)
        except STORAGE_ERRORS:
            pass
