"""The one settings object of stillmoving, read from ``STILLMOVING_*`` environment variables (or `.env`).

Built once per process (`get_settings`) and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.presets import ANNOTATORS, CONTROLNETS, MOTION_LORAS, PRESETS, WEIGHTED_ANNOTATOR_TYPES, Preset

DEV_API_KEY = "sm-dev-key"
TRACE_EXPORTERS = ("otlp", "console")  # the OTEL_TRACES_EXPORTER values served (opentelemetry-sdk, OTLP over HTTP)


class Settings(BaseSettings):
    """Every knob of the service; the env name is ``STILLMOVING_`` + the field name in capitals."""

    model_config = SettingsConfigDict(env_prefix="STILLMOVING_", env_file=".env", extra="ignore")

    # Connections
    redis_url: str = "redis://127.0.0.1:6379/0"
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = Field(None, description="endpoint used in presigned URLs (default: s3_endpoint_url)")
    s3_bucket: str = "stillmoving"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_create_bucket: bool = True
    presign_expiry_s: int = Field(3600, ge=1, le=7 * 24 * 3600)

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEV_API_KEY])
    api_http: Literal["h11", "httptools"] = Field("h11", description="uvicorn's HTTP parser: h11 bounds the request "
                                                  "head (max_request_head_bytes); httptools is faster and unbounded, "
                                                  "for use behind the reverse proxy (deploy/nginx), which bounds it")
    max_request_head_bytes: int = Field(64 * 1024, ge=4096, description="request line and headers (h11)")
    api_max_connections: int = Field(512, ge=1, description="concurrent connections and tasks; 503 past it")
    api_keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this")
    api_head_timeout_s: float = Field(10.0, gt=0, description="a request head must arrive whole within this of its "
                                      "first byte, else the connection is closed (h11; nginx's client_header_timeout)")
    api_body_timeout_s: float = Field(30.0, gt=0, description="longest wait for the next piece of a request body "
                                      "(408 past it; nginx's client_body_timeout)")
    uploads_per_key: int = Field(2, ge=1, description="checkpoint uploads one key may stream at once, per API "
                                 "process (429 past it; the proxy's UPLOADS_PER_KEY)")
    max_upload_bytes: int = Field(8 * 1024**3, ge=1)
    max_header_bytes: int = Field(16 * 1024**2, ge=1024)
    max_json_bytes: int = Field(1024**2, ge=1024, description="largest JSON request body (413 past it, checked "
                                                             "before the body is read)")
    upload_part_bytes: int = Field(8 * 1024**2, ge=5 * 1024**2)
    max_file_bytes: int = Field(256 * 1024**2, ge=1, description="size limit of a POST /files upload (enforced "
                                "while streaming)")
    max_file_frames: int = Field(2000, ge=1, description="most frames a POST /files video may have (the probe "
                                 "stops decoding past it)")
    max_file_pixels: int = Field(3840 * 2160, ge=1, description="most width x height of a POST /files frame")
    max_queued_jobs_per_key: int = Field(50, ge=1)
    job_rate_per_s: float = Field(2.0, gt=0, description="sustained job creations per second per key (a token "
                                                         "bucket; 429 with Retry-After past it)")
    job_burst: int = Field(30, ge=1, description="job creations a key may make at once before the rate applies")
    job_retention_s: int = Field(7 * 24 * 3600, ge=60, description="how long a finished job's record is kept")
    idempotency_ttl_s: int = 24 * 3600
    idempotency_lease_s: int = Field(120, ge=5, description="how long an Idempotency-Key stays reserved by a "
                                                          "request in progress without news from it (a request "
                                                          "that died with its API frees its key after this)")

    # Models (engine.ModelSpec / MotionAdapterSpec are built from these)
    model_preset: Literal["shapes", "tiny", "sd15"] = "shapes"
    base_model_id: str | None = Field(None, description="hub id or local directory (default: the preset's own: "
                                                        "SD 1.5 for sd15, the committed world for shapes)")
    motion_adapter_id: str | None = Field(None, description="hub id or local directory (default: the preset's own)")
    device: str = "auto"
    precision: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    hf_cache_dir: str | None = None
    local_files_only: bool = False
    motion_train_steps: int = Field(300, ge=1)
    motion_num_images: int = Field(16, ge=1)
    motion_rank: int = Field(16, ge=1)
    motion_batch_size: int = Field(1, ge=1, description="frozen videos per Motion Adapter training step")
    image_batch_size: int = Field(4, ge=1, description="stills per T2I call when making frozen videos "
                                  "(TrainSpec.image_batch_size, bench/README.md \"Batching\")")
    gradient_checkpointing: bool = Field(False, description="recompute activations in training (sd15 at 512x512x16 "
                                                             "within 24 GB of GPU memory)")
    max_video_pixels: int | None = Field(None, ge=1, description="num_frames x height x width of one video, or of "
                                         "one context window of a longer one (default: the preset's, "
                                         "common/presets.py)")
    max_video_frames: int | None = Field(None, ge=2, description="the longest video, sampled with FreeNoise past "
                                         "the motion modules' frame positions (default: the preset's, 256)")
    max_video_work: int | None = Field(None, ge=1, description="num_frames x height x width x steps of one video "
                                                             "(default: the preset's)")
    max_train_pixels: int | None = Field(None, ge=1, description="num_frames x height x width of a customization's "
                                                               "training videos (default: the preset's)")
    max_train_work: int | None = Field(None, ge=1, description="pixel-frame steps of one customization, stills and "
                                                             "training (default: the preset's)")
    controlnet_models: dict[str, str] | None = Field(None, description="ControlNet per name (a control's "
                                                     "`controlnet`, default its type): hub id or local directory, "
                                                     "or builtin (from_unet of the base); default: the preset's "
                                                     "(common/presets.py CONTROLNETS)")
    annotator_models: dict[str, str] | None = Field(None, description="annotator weights per control type ("
                                                    f"{', '.join(WEIGHTED_ANNOTATOR_TYPES)}): hub id or local "
                                                    "directory; a type without one is refused (422); default: the "
                                                    "preset's (common/presets.py ANNOTATORS)")
    motion_lora_models: Annotated[list[str] | None, NoDecode] = Field(
        None, description="the motion LoRAs a generation's motion_lora may name (its allow-list): hub ids or local "
                          "directories, comma-separated; empty = none; default: the preset's (common/presets.py "
                          "MOTION_LORAS)")
    motion_lora_cache_size: int = Field(4, ge=1, description="worker LRU of read motion LoRAs")
    evaluation_clip_model: str | None = Field(None, description="CLIP weights (hub id or local directory) an "
                                              "evaluation job scores CLIP-I / CLIP-T with (real weights); none: "
                                              "not scored (the shapes world's judge scores it there)")
    compile_unet: bool = Field(False, description="torch.compile the sampling UNets (GPU; each loaded model's first "
                                                  "video pays the compile time)")

    # Worker
    workdir: Path = Path("var/worker")
    train_queue: str = "train"
    generate_queue: str = "generate"
    train_soft_time_limit_s: int = 4 * 3600
    train_time_limit_s: int = 4 * 3600 + 300
    generate_soft_time_limit_s: int = 1800
    generate_time_limit_s: int = 1800 + 120
    base_cache_size: int = Field(1, ge=1)
    customization_cache_size: int = Field(4, ge=1)
    controlnet_cache_size: int = Field(2, ge=1, description="worker LRU of loaded ControlNets")
    annotator_cache_size: int = Field(2, ge=1, description="worker LRU of loaded annotators (depth, pose, lineart)")
    wait_poll_s: float = Field(5.0, gt=0, description="how often a generation re-checks a customization in training")
    progress_interval_s: float = Field(0.5, ge=0)
    log_loss_every: int = Field(10, ge=1, description="training steps between two loss lines of a job's log")
    job_max_events: int = Field(1000, ge=10, description="events a job's stream (its log, live status) keeps")
    events_poll_s: float = Field(0.5, gt=0, description="how often a live status stream reads new events")
    events_keepalive_s: float = Field(10.0, gt=0, description="seconds between an idle live status stream's comments")

    # Webhooks (worker.webhooks: a delivery thread in each worker's main process)
    webhook_allow_private: bool = Field(False, description="let webhooks reach loopback, private and link-local "
                                        "addresses (tests, a private network); metadata addresses never")
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="one delivery attempt, connect to response "
                                     "(connect: at most 3 s)")
    webhook_max_response_bytes: int = Field(64 * 1024, ge=0, description="most of a receiver's response read")
    webhook_backoff_s: float = Field(1.0, gt=0, description="wait before an event's first retry; doubles each retry")
    webhook_backoff_max_s: float = Field(300.0, gt=0, description="longest wait between two retries of an event")
    webhook_retry_window_s: float = Field(3600.0, gt=0, description="an event still failing this long after its "
                                          "first attempt is given up (recorded) and the next one is sent")
    webhook_progress_interval_s: float = Field(0.5, ge=0.5, description="least time between two progress "
                                               "deliveries of a job (by the events' times)")
    webhook_poll_s: float = Field(0.5, gt=0, description="how often the deliverer looks for new events")
    webhook_lease_s: float = Field(30.0, gt=0, description="a job's deliveries are one deliverer's for this long "
                                   "after its last news (a killed worker's jobs pass to another after it)")
    webhook_concurrency: int = Field(8, ge=1, description="jobs one worker's deliverer serves at once (a hanging "
                                     "receiver holds one of them)")
    webhook_attempts_kept: int = Field(200, ge=1, description="delivery attempts GET /jobs/{id}/webhooks keeps")

    # Observability (logs: common/logs.py; metrics: api/metrics.py, worker/metrics.py; traces: common/tracing.py)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = Field("json", description="json: one object per line with request_id, "
                                                "job_id, owner (the key's hash); text: for a person at a terminal")
    metrics_token: str | None = Field(None, description="when set, GET /metrics needs `Authorization: Bearer "
                                      "<this>`; unset, it is open (keep it off the public entry: the proxy 404s it)")
    worker_metrics_port: int = Field(9540, ge=0, le=65535, description="where each worker's main process serves "
                                     "its pool's metrics (0: not served)")
    worker_metrics_host: str = "127.0.0.1"
    # the standard OpenTelemetry variables, under their own names: they say whether to trace (common/tracing.py)
    otel_sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")
    otel_traces_exporter: str | None = Field(None, validation_alias="OTEL_TRACES_EXPORTER")
    otel_exporter_otlp_endpoint: str | None = Field(None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))
    otel_exporter_otlp_protocol: str | None = Field(None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"))

    # Fault tolerance
    heartbeat_interval_s: float = Field(10.0, gt=0, description="how often a running job's worker writes heartbeat_at")
    heartbeat_timeout_s: float = Field(120.0, gt=0, description="a running job with no heartbeat for this long is "
                                                               "re-queued by the reaper")
    reaper_interval_s: float = Field(15.0, gt=0, description="how often each worker looks for dead or overdue jobs")
    gc_interval_s: float = Field(600.0, gt=0, description="how often a worker's reaper sweeps storage for "
                                                         "checkpoints and uploads nobody needs")
    gc_grace_s: float = Field(3600.0, ge=0, description="objects younger than this are never collected")
    max_attempts: int = Field(3, ge=1, description="runs of one job (first + retries after a lost worker)")
    train_checkpoint_every: int = Field(50, ge=1, description="training steps between resume states in storage")
    shutdown_grace_s: float = Field(25.0, gt=0, description="a worker's time from SIGTERM (scale-down, spot "
                                    "preemption) to its exit: keep Kubernetes' terminationGracePeriodSeconds above "
                                    "it; what still runs at its end is given back and the worker exits")
    shutdown_reserve_s: float = Field(5.0, ge=0, description="the end of the grace kept for a job's last upload (its "
                                      "result or resume state): a job finishes under SIGTERM only if its estimate "
                                      "fits in shutdown_grace_s minus this")
    storage_retries: int = Field(5, ge=0, description="retries of a worker's failed storage operation before its "
                                                      "job fails with storage_unavailable")
    storage_backoff_s: float = Field(1.0, gt=0, description="wait before the first storage retry; doubles each retry")
    storage_backoff_max_s: float = Field(30.0, gt=0, description="longest wait between two storage retries")
    storage_timeout_s: float = Field(60.0, gt=0, description="read timeout of one storage request (connect: at "
                                                             "most 5 s)")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        keys = [k for k in value if k]
        if not keys:
            raise ValueError("at least one API key is required")
        return keys

    @field_validator("annotator_models")
    @classmethod
    def _annotator_types(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        unknown = sorted(set(value or {}) - set(WEIGHTED_ANNOTATOR_TYPES))
        if unknown:
            raise ValueError(f"annotator_models: {unknown[0]!r} has no annotator here (served: "
                             f"{', '.join(WEIGHTED_ANNOTATOR_TYPES)})")
        return value

    @field_validator("motion_lora_models", mode="before")
    @classmethod
    def _split_sources(cls, value):
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        return None if value is None else [s.strip() for s in value if s.strip()]

    @field_validator("otel_traces_exporter")
    @classmethod
    def _exporters(cls, value: str | None) -> str | None:
        names = [n.strip() for n in (value or "").split(",") if n.strip()]
        unknown = [n for n in names if n not in (*TRACE_EXPORTERS, "none")]
        if unknown:
            raise ValueError(f"OTEL_TRACES_EXPORTER={value!r}: {unknown[0]!r} is not served (otlp, console, none)")
        return value

    @field_validator("otel_exporter_otlp_protocol")
    @classmethod
    def _protocol(cls, value: str | None) -> str | None:
        if value not in (None, "http/protobuf"):
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={value!r}: only http/protobuf is served")
        return value

    def trace_exporters(self) -> list[str]:
        """The span exporters to install: none unless OTEL_TRACES_EXPORTER names some or an OTLP endpoint is
        set (then otlp); none with OTEL_SDK_DISABLED or OTEL_TRACES_EXPORTER=none."""
        if self.otel_sdk_disabled:
            return []
        if self.otel_traces_exporter is None:
            return ["otlp"] if self.otel_exporter_otlp_endpoint else []
        names = [n.strip() for n in self.otel_traces_exporter.split(",") if n.strip()]
        return [] if "none" in names else list(dict.fromkeys(names))

    def preset(self) -> Preset:
        """The served preset's facts with this deployment's cost limits applied."""
        limits = {k: getattr(self, k) for k in ("max_video_pixels", "max_video_work", "max_train_pixels",
                                                  "max_train_work", "max_video_frames")}
        return replace(PRESETS[self.model_preset], **{k: v for k, v in limits.items() if v is not None})

    def controlnets(self) -> dict[str, str]:
        """The ControlNets served, by name: the settings', else the preset's."""
        return dict(CONTROLNETS[self.model_preset] if self.controlnet_models is None else self.controlnet_models)

    def annotators(self) -> dict[str, str]:
        """The annotator weights configured, by control type: the settings', else the preset's."""
        return dict(ANNOTATORS[self.model_preset] if self.annotator_models is None else self.annotator_models)

    def motion_loras(self) -> list[str]:
        """The motion LoRAs served (a request's `motion_lora` must be one of these strings): the settings', else
        the preset's."""
        return list(MOTION_LORAS[self.model_preset] if self.motion_lora_models is None else self.motion_lora_models)

    def queue_for(self, kind: str) -> str:
        """Celery queue of a job kind: "customize" trains; "generate" and "evaluate" sample."""
        return self.train_queue if kind == "customize" else self.generate_queue

    def time_limits(self, kind: str) -> tuple[int, int]:
        """(soft, hard) time limit in seconds of a job kind."""
        if kind == "customize":
            return self.train_soft_time_limit_s, self.train_time_limit_s
        return self.generate_soft_time_limit_s, self.generate_time_limit_s

    def to_env(self) -> dict[str, str]:
        """These settings as ``STILLMOVING_*`` variables (to start a worker with the same settings)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None or name.startswith("otel_"):  # the OTEL_* variables pass through the environment
                continue
            if isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, dict):
                value = json.dumps(value)
            env[f"STILLMOVING_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment once."""
    return Settings()
