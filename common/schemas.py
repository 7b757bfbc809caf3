"""Typed request, record and response shapes shared by the API and the worker."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from common.exports import ExportFormat
from common.long_video import MAX_TRAVEL_PROMPTS, parse_prompt

JobKind = Literal["customize", "generate", "evaluate"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
CustomizationStatus = Literal["queued", "training", "ready", "failed", "canceled"]
TERMINAL = ("succeeded", "failed", "canceled")
Method = Literal["still-moving", "naive", "base"]
ControlType = Literal["canny", "depth", "openpose", "lineart", "precomputed"]
CANNY_THRESHOLDS = (100, 200)  # OpenCV Canny's (low, high) hysteresis thresholds by default

MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 500
MAX_VIDEO_FRAMES = 1024  # the schema's ceiling; a deployment serves up to its `max_video_frames` (GET /limits)
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROMPT_CHARS)]
SEED_MAX = 2**32 - 1
MAX_MOTION_LORA_CHARS = 300


WebhookEventType = Literal["start", "progress", "completed"]
MAX_WEBHOOK_URL_CHARS = 2000
DEFAULT_WEBHOOK_EVENTS: tuple[WebhookEventType, ...] = ("completed",)


class WebhookFields(BaseModel):
    """``webhook`` and ``webhook_events_filter``, on both POSTs (`common.webhooks` checks where the URL leads)."""

    webhook: str | None = Field(None, min_length=1, max_length=MAX_WEBHOOK_URL_CHARS,
                                description="http(s) URL that receives the job's events, signed per Standard "
                                            "Webhooks with the key's secret (GET /webhooks/secret)")
    webhook_events_filter: list[WebhookEventType] = Field(
        default_factory=lambda: list(DEFAULT_WEBHOOK_EVENTS), min_length=1, max_length=3,
        description="which events are delivered: start (each run's start), progress (at most one per 500 ms), "
                    "completed (the end: succeeded, failed or canceled)")

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, url: str | None) -> str | None:
        from urllib.parse import urlsplit

        if url is None:
            return url
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises on a malformed port)
        except ValueError as exc:
            raise ValueError(f"webhook={url!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook={url!r}: only http and https URLs with a host are delivered")
        if parts.username or parts.password:
            raise ValueError("webhook must not carry credentials")
        return url

    @field_validator("webhook_events_filter")
    @classmethod
    def _events(cls, events: list[str]) -> list[str]:
        return sorted(set(events), key=["start", "progress", "completed"].index)


def _multiple_of_8(name: str, value: int | None) -> int | None:
    if value is not None and value % 8:
        raise ValueError(f"{name}={value} must be a multiple of 8")
    return value


class CustomizationConfig(WebhookFields):
    """The ``config`` part of ``POST /customizations``: what to train (Still-Moving settings)."""

    model_config = ConfigDict(extra="forbid")

    prompts: list[str] = Field(min_length=1, max_length=MAX_PROMPTS,
                               description="prompts of the frozen-video source images")
    base_model: str | None = Field(None, description="base preset (default: the server's model_preset)")
    name: str | None = Field(None, max_length=100)
    num_images: int = Field(40, ge=1, le=500)
    train_steps: int = Field(500, ge=1, le=20000)
    rank: int = Field(16, ge=1, le=256)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    num_frames: int | None = Field(None, ge=2, le=64)
    height: int | None = Field(None, ge=8, le=1024)
    width: int | None = Field(None, ge=8, le=1024)
    train_resnets: bool = Field(False, description="Spatial Adapters also on the resnet convs")
    train_projections: bool = Field(False, description="... and on the spatial transformers' proj_in/out")
    train_feedforward: bool = Field(False, description="... and on their feed-forward layers (ff.net)")
    use_motion_adapter: bool = True
    prior_preservation_weight: float = Field(0.0, ge=0, le=10, description="weight of frozen videos of base-T2I "
                                             "samples of generic prompts trained alongside (0 = off)")
    prior_num_images: int = Field(16, ge=1, le=500)
    motion_adapter_source: Literal["shared", "customized"] = Field(
        "customized", description="customized (default): a Motion Adapter trained on this customization's "
                                  "frozen videos (docs/evidence.md); shared: the base's cached one, trained once")

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, prompts: list[str]) -> list[str]:
        for i, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ValueError(f"prompts[{i}] is empty")
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ValueError(f"prompts[{i}] is longer than {MAX_PROMPT_CHARS} characters")
        return prompts

    @field_validator("height", "width")
    @classmethod
    def _size(cls, value, info):
        return _multiple_of_8(info.field_name, value)


class MediaRef(BaseModel):
    """A video or image the worker reads: an uploaded file (``POST /files``) or a finished generation's video."""

    model_config = ConfigDict(extra="forbid")

    file: str | None = Field(None, min_length=1, max_length=64, description="a file id from POST /files")
    job_id: str | None = Field(None, min_length=1, max_length=64, description="a succeeded generation of this key")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.job_id is None):
            raise ValueError("give exactly one of file and job_id")
        return self


class ControlRequest(MediaRef):
    """A ControlNet driven by a reference video, resampled to the request's num_frames and size."""

    type: ControlType = Field(description="canny: edges computed in the worker (OpenCV Canny); depth/openpose/"
                              "lineart: a depth estimator's, a pose estimator's or a line-drawing network's maps, "
                              "computed in the worker where its weights are configured (GET /limits: control_types); "
                              "precomputed: the file holds the conditioning frames")
    controlnet: str | None = Field(None, min_length=1, max_length=32, description="which configured ControlNet "
                                   "(GET /limits: controlnets); default: the type's, canny for precomputed")
    scale: float = Field(1.0, ge=0, le=2, description="controlnet_conditioning_scale; 0 = no effect")
    start: float = Field(0.0, ge=0, le=1, description="fraction of the steps where the control starts")
    end: float = Field(1.0, ge=0, le=1, description="... and where it ends")
    low_threshold: int | None = Field(None, ge=0, le=1000, description="canny only (default 100)")
    high_threshold: int | None = Field(None, ge=0, le=1000, description="canny only (default 200)")

    @model_validator(mode="after")
    def _control(self):
        if self.start >= self.end:
            raise ValueError(f"start={self.start} must be less than end={self.end}")
        thresholds = (self.low_threshold, self.high_threshold)
        if self.type != "canny" and thresholds != (None, None):
            raise ValueError(f"low_threshold/high_threshold are canny's; type is {self.type!r}")
        if self.type == "canny":
            self.low_threshold = CANNY_THRESHOLDS[0] if self.low_threshold is None else self.low_threshold
            self.high_threshold = CANNY_THRESHOLDS[1] if self.high_threshold is None else self.high_threshold
            if self.low_threshold > self.high_threshold:
                raise ValueError(f"low_threshold={self.low_threshold} is above high_threshold={self.high_threshold}")
        return self

    def controlnet_name(self) -> str:
        return self.controlnet or ("canny" if self.type == "precomputed" else self.type)


class InitRequest(MediaRef):
    """Video-to-video: the generation starts from this video, noised to `strength`."""

    strength: float = Field(0.8, gt=0, le=1, description="how much of the init video is replaced (1 = all)")


class GenerateRequest(WebhookFields):
    """``POST /generate``: one video from the base model or a customization."""

    model_config = ConfigDict(extra="forbid")

    customization_id: str | None = Field(None, min_length=1, max_length=64, description="null or absent means the "
                                         "base model")
    prompt: Prompt | dict[int, Prompt] = Field(description="a prompt, or {frame: prompt} (prompt travel): frames "
                                               "in [0, num_frames), 0 among them, at most "
                                               f"{MAX_TRAVEL_PROMPTS}; the text embedding moves linearly from each "
                                               "key frame's prompt to the next one's (FreeNoise)")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    num_frames: int | None = Field(None, ge=2, le=MAX_VIDEO_FRAMES, description="default: the preset's; at most "
                                   "GET /limits max_video_frames; past context_length, FreeNoise samples it in "
                                   "windows; within the preset's cost limits")
    context_length: int | None = Field(None, ge=2, le=MAX_VIDEO_FRAMES, description="frames the motion modules "
                                       "see at once (FreeNoise's window); default and most: their frame positions "
                                       "(GET /limits max_frames)")
    context_stride: int | None = Field(None, ge=1, le=MAX_VIDEO_FRAMES, description="frames between the starts "
                                       "of two windows, 1..context_length; default: context_length - context_length / 4 (windows "
                                       "overlap by a quarter)")
    height: int | None = Field(None, ge=8, le=1024, description="multiple of 8; default: the preset's")
    width: int | None = Field(None, ge=8, le=1024, description="multiple of 8; default: the preset's")
    steps: int | None = Field(None, ge=1, le=150)
    guidance_scale: float | None = Field(None, ge=0, le=30, description="default: the preset's (GET /limits)")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="default: random, reported in the result")
    fps: int = Field(8, ge=1, le=60)
    format: Literal["mp4", "gif"] = "mp4"
    spatial_adapter_scale: float = Field(1.0, ge=-2, le=2)
    method: Method | None = Field(None, description="default: still-moving with a customization, else base")
    scheduler: Literal["ddim", "euler", "dpm++"] = Field("ddim", description="sampling scheduler (AnimateDiff's "
                                                         "linear betas)")
    motion_adapter_scale: float = Field(0.0, ge=-2, le=2, description="the customization's Motion Adapter at sampling: "
                                        "0 = removed (Still-Moving), 1 = static videos, negative = more motion")
    control: ControlRequest | None = Field(None, description="a ControlNet driven by a reference video")
    init: InitRequest | None = Field(None, description="video-to-video from this video")
    motion_lora: str | None = Field(None, min_length=1, max_length=MAX_MOTION_LORA_CHARS, description="an AnimateDiff "
                                    "motion LoRA on the motion modules (camera zoom, pan, tilt, roll): a hub id or "
                                    "local directory of those this deployment serves (GET /limits: motion_loras)")
    motion_lora_scale: float | None = Field(None, ge=-2, le=2, description="the motion LoRA's weight (default 1; 0 "
                                            "= as without it); only with motion_lora")

    @field_validator("height", "width")
    @classmethod
    def _size(cls, value, info):
        return _multiple_of_8(info.field_name, value)

    @field_validator("motion_lora_scale")
    @classmethod
    def _motion_lora_scale(cls, value: float | None, info):
        if value is not None and info.data.get("motion_lora") is None:
            raise ValueError("needs a motion_lora")
        return value

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value):
        return parse_prompt(value, MAX_PROMPT_CHARS)  # one error naming `prompt` (not one per union member)

    @model_validator(mode="after")
    def _method(self):
        if self.method is None:
            self.method = "still-moving" if self.customization_id else "base"
        elif self.method != "base" and not self.customization_id:
            raise ValueError(f"method={self.method!r} needs a customization_id")
        return self

    @field_validator("motion_adapter_scale")
    @classmethod
    def _motion_scale(cls, value: float, info):
        method = info.data.get("method") or ("still-moving" if info.data.get("customization_id") else "base")
        if value and method == "base":
            raise ValueError("needs a customization_id and a method other than base (the Motion Adapter is the "
                             "customization's)")
        return value


class EvaluationRequest(WebhookFields):
    """``POST /evaluations``: one prompt and seed rendered four ways (base, naive, Still-Moving, Still-Moving
    trained without the Motion Adapter) at the customization's size, with a contact sheet and measures."""

    model_config = ConfigDict(extra="forbid")

    customization_id: str = Field(min_length=1, max_length=64)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="default: random, reported in the result")
    num_frames: int | None = Field(None, ge=2, le=64, description="default: the customization's training frames")
    steps: int | None = Field(None, ge=1, le=150, description="sampling steps of each row; default: the preset's")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return GenerateRequest._prompt(value)  # the same rule: not blank


class ErrorInfo(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorInfo


class JobRecord(BaseModel):
    """A job as stored in Redis (the source of truth). ``result`` holds storage keys, not URLs."""

    id: str
    kind: JobKind
    owner: str
    status: JobStatus = "queued"
    stage: str | None = None
    progress: float = 0.0
    step: int | None = None  # step of `steps` within `stage`, as the engine last reported it
    steps: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: ErrorInfo | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    customization_id: str | None = None
    attempts: int = 0
    given_back: int = 0  # attempts that ended by giving the job back at their worker's shutdown (not a loss)
    cancel_requested: bool = False
    heartbeat_at: datetime | None = None
    worker: str | None = None  # "<host>:<pid>" of the attempt that holds a running job
    eta_s: float | None = None  # seconds left, from this attempt's measured step rate (while running)
    device_s: float = 0.0  # seconds earlier attempts held a worker (lost workers, until their last heartbeat)
    inputs: dict[str, Any] | None = None  # a generation's control/init sources: {"key", "frames"} each
    request_id: str | None = None  # the X-Request-ID of the request that created it (its runs' log records)
    trace: dict[str, str] | None = None  # W3C trace context of its enqueue (its runs' spans: common/tracing.py)


class FileInfo(BaseModel):
    """What an uploaded video or image holds, as probed (``POST /files``)."""

    kind: Literal["video", "image"]
    frames: int
    width: int
    height: int
    fps: float | None
    size: int
    sha256: str
    content_type: str
    filename: str | None = None
    created_at: datetime


class FileRecord(FileInfo):
    """An uploaded file as stored in Redis; its object is `key`."""

    id: str
    owner: str
    key: str


class FileView(FileInfo):
    """``POST /files`` and ``GET /files/{id}``."""

    file_id: str


class FileList(BaseModel):
    """``GET /files``: the caller's files, newest first."""

    items: list[FileView]
    next_cursor: str | None


class CustomizationRecord(BaseModel):
    """A customization as stored in Redis."""

    id: str
    owner: str
    name: str | None = None
    status: CustomizationStatus = "queued"
    job_id: str
    base_model: str
    checkpoint_sha256: str
    checkpoint_format: str
    config: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None = None
    error: ErrorInfo | None = None
    manifest: dict[str, Any] | None = None


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    customization_id: str | None = None


class JobEvent(BaseModel):
    """One event of a job (`common.events`): a line of its log, or a status update of its live stream."""

    id: str = Field(description="the stream id: the SSE id a client resumes after (Last-Event-ID)")
    time: datetime
    type: Literal["status", "stage", "progress", "log"]
    message: str | None = None
    level: Literal["info", "warning"] | None = None
    status: JobStatus | None = None
    stage: str | None = None
    progress: float | None = None
    step: int | None = None
    steps: int | None = None
    eta_s: float | None = None
    loss: float | None = None
    attempt: int | None = None
    worker: str | None = None
    error: ErrorInfo | None = None


class JobLog(BaseModel):
    """``GET /jobs/{id}/logs``: stage changes, status changes (the worker, retries), loss lines, warnings."""

    items: list[JobEvent]


class JobView(BaseModel):
    """``GET /jobs/{id}``."""

    id: str
    kind: JobKind
    status: JobStatus
    stage: str | None
    progress: float
    queue_position: int | None = Field(None, description="1 = next to run; only while queued")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: ErrorInfo | None
    customization_id: str | None = None
    attempts: int = Field(0, description="runs so far (more than 1 after a worker was lost or shut down)")
    eta_s: float | None = Field(None, description="seconds left, from this job's measured step rate; only while "
                                                  "running")
    params: dict[str, Any]
    result: dict[str, Any] | None
    logs: list[JobEvent] | None = Field(None, description="the job's log, with ?logs=true")


class WebhookAttempt(BaseModel):
    """One delivery attempt of a job's webhook."""

    webhook_id: str = Field(description="the webhook-id header: the same for every attempt of one event")
    event: WebhookEventType
    status: JobStatus = Field(description="the job's status in the body delivered")
    time: datetime
    url: str
    attempt: int = Field(description="1 for an event's first try, then its retries")
    status_code: int | None = Field(None, description="the receiver's HTTP status; null when none came")
    error: str | None = Field(None, description="why it failed: the status, a timeout, a refused address ...")
    delivered: bool
    duration_ms: float


class WebhookAttemptList(BaseModel):
    """``GET /jobs/{id}/webhooks``: the delivery attempts of its webhook, oldest first."""

    items: list[WebhookAttempt]


class WebhookSecret(BaseModel):
    """``GET /webhooks/secret``: the key's signing secret (Standard Webhooks ``whsec_`` + base64)."""

    secret: str


class JobList(BaseModel):
    items: list[JobView]
    next_cursor: str | None


class CustomizationView(BaseModel):
    """``GET /customizations/{id}``: state, settings, and the manifest once ready."""

    id: str
    name: str | None
    status: CustomizationStatus
    job_id: str
    base_model: str
    checkpoint: dict[str, str]
    config: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None
    error: ErrorInfo | None
    manifest: dict[str, Any] | None
    preview_url: str | None = None
    image_urls: list[str] = Field(default_factory=list)


class ExportView(BaseModel):
    """``GET /customizations/{id}/export``: a presigned URL to the export, built once as training ended."""

    customization_id: str
    format: ExportFormat
    url: str
    filename: str = Field(description="the name the download is saved under")
    size: int = Field(description="bytes")
    sha256: str
    expires_in_s: int
    checkpoint_url: str | None = Field(None, description="with include_checkpoint: your uploaded checkpoint, which "
                                                         "the bundle names but does not hold")
    checkpoint_filename: str | None = None


class CustomizationList(BaseModel):
    items: list[CustomizationView]
    next_cursor: str | None


class LimitsView(BaseModel):
    """``GET /limits``: the served preset's defaults and the largest jobs it accepts (422 beyond them).

    Costs: `max_video_pixels` bounds num_frames x height x width (of one context window for a video longer than
    its context_length), `max_video_work` the whole video's num_frames x height x width x steps;
    `max_train_pixels` bounds a customization's num_frames x height x width and `max_train_work` a customization's (stills + prior stills) x image steps x height x width
    plus 3 x train_steps x num_frames x height x width (x 2 with prior preservation)."""

    preset: str
    height: int
    width: int
    num_frames: int
    image_steps: int
    sample_steps: int
    guidance_scale: float = Field(description="classifier-free guidance of stills and videos when a request sets none")
    max_frames: int = Field(description="frame positions of the motion modules: the longest video sampled in one "
                            "pass, and the longest (and default) context_length")
    max_video_frames: int = Field(description="the longest video (sampled with FreeNoise in context windows)")
    max_video_pixels: int
    max_video_work: int
    max_train_pixels: int
    max_train_work: int
    train_sizes: list[dict[str, int]] | None = Field(description="the sizes a customization trains at; null = any")
    controlnets: list[str] = Field(default_factory=list, description="the ControlNets a control may name")
    control_types: list[str] = Field(default_factory=list, description="the control types served here: canny and "
                                     "precomputed, and those whose annotator weights are configured")
    motion_loras: list[str] = Field(default_factory=list, description="the motion LoRAs a generation may name")
