"""What a task does, step by step: load the job, fetch inputs, call the engine, store artifacts, finish.

Runs inside the Celery pool process. Idempotent: a re-delivered job starts over in a clean directory
and writes the same storage keys; artifacts are uploaded first, the manifest after them, and the job's
result (the keys it names) is recorded last. Storage calls retry with backoff (`RetryingStorage`); an
outage past the retry window fails the job with ``storage_unavailable``. A running job holds a lease
(its attempt number) and keeps it alive with a heartbeat; training saves a resume state to storage every
``train_checkpoint_every`` steps, and a retry continues from it. When the worker shuts down (SIGTERM:
`worker.shutdown`), the engine run is suspended between two steps unless it can finish in time, and the job is
given back: re-queued for another worker, a training with its resume state saved at the step it was at.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel

import engine
from common import events
from common import storage as keys
from common.errors import CustomizationFailed, InvalidArgument, NotFound, ServiceError
from common.jobstore import CANCELED, JobStore, now
from common.presets import WEIGHTED_ANNOTATOR_TYPES
from common.schemas import TERMINAL, CustomizationConfig, ErrorInfo, GenerateRequest, JobRecord
from common.settings import Settings, get_settings
from common.storage import CONTENT_TYPES, RetryingStorage
from worker import telemetry, train_state
from worker.cache import LRUCache
from worker.evaluation import run_evaluation
from worker.progress import Heartbeat, JobProgress
from worker.requeue import requeue
from worker.shutdown import worker_id

log = logging.getLogger("stillmoving.worker")


class WaitForCustomization(Exception):
    """Not an error: the generation's customization is still queued or training; try again later."""


class NotQueued(Exception):
    """Not an error: another worker started the job first (or it ended): pick again."""


PICKS_PER_TURN = 5  # a turn lost to a race with another worker picks again, this many times at most


def job_outcome(exc: Exception) -> tuple[str, ErrorInfo]:
    """How an exception ends a job, (status, error): the one map from the service's (`ServiceError`) and the
    engine's (`engine.EngineError`) exceptions, each with its stable code, to the job record; anything else is
    ``internal`` (and logged with its traceback by the caller)."""
    if isinstance(exc, engine.CancelledError):
        return "canceled", CANCELED
    if isinstance(exc, (ServiceError, engine.EngineError)):
        return "failed", ErrorInfo(code=exc.code, message=exc.message)
    if isinstance(exc, SoftTimeLimitExceeded):
        return "failed", ErrorInfo(code="timeout", message="the job ran past its time limit")
    return "failed", ErrorInfo(code="internal", message=f"internal error ({type(exc).__name__})")


def model_spec(settings: Settings) -> engine.ModelSpec:
    return engine.ModelSpec(preset=settings.model_preset, base_model=settings.base_model_id,
                            motion_adapter=settings.motion_adapter_id, device=settings.device,
                            precision=settings.precision, cache_dir=settings.hf_cache_dir,
                            local_files_only=settings.local_files_only,
                            gradient_checkpointing=settings.gradient_checkpointing, compile_unet=settings.compile_unet)


def _spec_fields(request: BaseModel, spec_type: type) -> dict:
    """The request's values for the spec's fields of the same name: the schema's defaults are the only ones."""
    names = {f.name for f in dataclasses.fields(spec_type)}
    return {k: v for k, v in request.model_dump().items() if k in names}


def train_spec(config: dict, settings: Settings) -> engine.TrainSpec:
    """The engine's spec of a customization job, its config validated by the API's own schema."""
    request = CustomizationConfig.model_validate(config)
    motion = engine.MotionAdapterSpec(rank=settings.motion_rank, train_steps=settings.motion_train_steps,
                                      num_images=settings.motion_num_images, batch_size=settings.motion_batch_size)
    values = _spec_fields(request, engine.TrainSpec) | {"prompts": tuple(request.prompts)}
    return engine.TrainSpec(**values, image_batch_size=settings.image_batch_size,
                            checkpoint_every=settings.train_checkpoint_every, motion=motion)


def sample_spec(params: dict | GenerateRequest,
                sources: dict[str, tuple[Path, int | None]] | None = None) -> engine.SampleSpec:
    """The engine's spec of a generation job, its params validated by the API's own schema (unless already
    validated); `sources`: the local path and frame count of its control's and init's reference videos."""
    request = params if isinstance(params, GenerateRequest) else GenerateRequest.model_validate(params)
    values = _spec_fields(request, engine.SampleSpec) | {"control": None, "init": None}
    if values.get("motion_lora_scale") is None:  # the request's default: the spec's (1 with a LoRA)
        values.pop("motion_lora_scale", None)
    sources = sources or {}
    if request.control is not None:
        path, frames = sources["control"]
        control = request.control
        thresholds = {"low_threshold": control.low_threshold, "high_threshold": control.high_threshold} \
            if control.type == "canny" else {}
        values["control"] = engine.ControlSpec(video=str(path), type=control.type, source_frames=frames,
                                               scale=control.scale, start=control.start, end=control.end, **thresholds)
    if request.init is not None:
        path, frames = sources["init"]
        values["init"] = engine.InitSpec(video=str(path), source_frames=frames, strength=request.init.strength)
    return engine.SampleSpec(**values)


class InputMissing(NotFound):
    """A generation's control or init video is gone from storage (its file or job was deleted)."""

    code = "input_missing"


class Runner:
    """Per-process state: clients, the work directory and the model caches."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = JobStore.from_settings(settings)
        self.storage = RetryingStorage(settings)
        self.workdir = Path(settings.workdir).resolve()
        self.bases: LRUCache = LRUCache(settings.base_cache_size, "base")
        self.customizations: LRUCache = LRUCache(settings.customization_cache_size, "customization")
        self.controlnets: LRUCache = LRUCache(settings.controlnet_cache_size, "controlnet")
        self.annotators: LRUCache = LRUCache(settings.annotator_cache_size, "annotator")
        self.motion_loras: LRUCache = LRUCache(settings.motion_lora_cache_size, "motion_lora")

    # ---- inputs -----------------------------------------------------------------------------------
    def base(self) -> engine.BaseModels:
        spec = model_spec(self.settings)
        return self.bases.get_or_load(spec, lambda: engine.load_base_models(spec, self.workdir / "models"))

    def checkpoint(self, sha256: str) -> Path:
        key = keys.checkpoint_key(sha256)
        path = self.workdir / key  # the work directory mirrors the storage keys
        if not path.exists():
            self.storage.get_file(key, path)
        return path

    def fetch_prefix(self, prefix: str, target: Path, needed: set[str]) -> bool:
        """Download everything under `prefix` into `target` (a staging dir renamed when whole) if the names
        `needed` are all stored there; whether `target` holds it."""
        if target.exists():
            return True
        names = {k[len(prefix):] for k in self.storage.list_keys(prefix)}
        if not needed <= names:
            return False
        staging = target.parent / f".{target.name}.download"
        shutil.rmtree(staging, ignore_errors=True)
        for name in names:
            self.storage.get_file(prefix + name, staging / name)
        staging.rename(target)
        return True

    def motion_cache(self, key: str) -> Path:
        """Local Motion Adapter cache dir; pulls ``motion-adapters/<key>/`` from storage when it is there."""
        prefix = keys.motion_adapter_prefix(key)
        target = self.workdir / prefix
        self.fetch_prefix(prefix, target, {engine.MOTION_ADAPTER_FILE, engine.MOTION_META_FILE})
        return target.parent

    def controlnet(self, name: str, base: engine.BaseModels):
        """The ControlNet the settings serve as `name`, loaded once per base (an LRU like the base models')."""
        source = self.settings.controlnets()[name]
        return self.controlnets.get_or_load((name, source, id(base)), lambda: engine.load_controlnet(base, source))

    def annotator(self, control_type: str, base: engine.BaseModels):
        """The annotator the settings configure for `control_type` (None for canny and precomputed, which need
        none), loaded once per base like the ControlNets."""
        if control_type not in WEIGHTED_ANNOTATOR_TYPES:
            return None
        source = self.settings.annotators().get(control_type)
        if source is None:  # the API refuses it; a deployment whose settings changed since the job was queued
            raise engine.SpecError(f"control.type={control_type!r}: no annotator is configured on this worker",
                                   field="control.type")
        return self.annotators.get_or_load((control_type, source, id(base)),
                                           lambda: engine.load_annotator(base, control_type, source))

    def motion_lora(self, source: str, base: engine.BaseModels) -> engine.MotionLora:
        """A served motion LoRA's tensors, read once (an LRU like the ControlNets'); each UNet it is attached to
        keeps it under its adapter name (`engine.motion_loras`). One no longer served is refused (422)."""
        if source not in self.settings.motion_loras():
            raise InvalidArgument(f"motion_lora={source!r} is not served here", field="motion_lora")
        return self.motion_loras.get_or_load((source, id(base)), lambda: engine.read_motion_lora(base, source))

    def inputs(self, job: JobRecord, directory: Path) -> dict[str, tuple[Path, int | None]]:
        """Download the generation's control and init videos: {name: (local path, frame count)}; `InputMissing`
        when one is gone (its source job deleted, or its record expired and the collector took its video)."""
        local = {}
        for name, source in (job.inputs or {}).items():
            try:
                local[name] = (self.storage.get_file(source["key"], directory / name), source.get("frames"))
            except Exception as exc:
                if not keys.is_not_found(exc):
                    raise
                raise InputMissing(f"the {name} video ({source['key']}) is gone from storage: the job it came from "
                                   "was deleted (or its record expired and its video was collected) after this "
                                   "generation was queued; a file is kept while one reads it") from exc
        return local

    def customization_files(self, customization_id: str, images: bool = False) -> Path:
        """The local copy of a ready customization's artifact: adapters and manifest (with `images`: its stills)."""
        prefix = keys.customization_prefix(customization_id)
        directory = self.workdir / prefix
        for name in (engine.SPATIAL_ADAPTER_FILE, engine.MANIFEST_FILE):
            if not (directory / name).exists():
                self.storage.get_file(prefix + name, directory / name)
        manifest = engine.read_manifest(directory)
        names = [(manifest.get("motion_adapter") or {}).get("file")]  # its own Motion Adapter, if it has one
        names += [item["file"] for item in manifest.get("images", [])] if images else []
        for name in filter(None, names):
            if not (directory / name).exists():
                self.storage.get_file(prefix + name, directory / name)
        return directory

    def customization(self, customization_id: str, base: engine.BaseModels):
        record = self.store.get_customization(customization_id)
        if record is None:  # deleted since the job was queued
            raise CustomizationFailed(f"customization {customization_id!r} no longer exists")

        def load():
            directory = self.customization_files(customization_id)
            motion = engine.read_manifest(directory).get("motion_adapter") or {}
            motion_file = None  # the Motion Adapter it was trained with, for motion_adapter_scale != 0
            if motion.get("file"):  # its own, in the artifact
                motion_file = directory / motion["file"]
            elif motion.get("key"):  # the shared one, from the cache
                motion_file = self.motion_cache(motion["key"]) / motion["key"] / engine.MOTION_ADAPTER_FILE
            return engine.load_customization(base, directory, self.checkpoint(record.checkpoint_sha256),
                                             motion_file if motion_file and motion_file.exists() else None)

        return self.customizations.get_or_load((customization_id, id(base)), load)

    # ---- job lifecycle ----------------------------------------------------------------------------
    def start(self, job: JobRecord) -> JobProgress:
        """Take the job (queued → running, next attempt; a customization is then training); `NotQueued` when
        another worker has it or it ended."""
        attempt, started_at = job.attempts + 1, now()
        if not self.store.transition(job.id, ["queued"], attempt=job.attempts, status="running", started_at=started_at,
                                     stage="starting", attempts=attempt, heartbeat_at=now(),
                                     worker=f"{socket.gethostname()}:{os.getpid()}"):
            log.info("job %s: not queued any more, skipped", job.id)
            raise NotQueued(job.id)
        job.status, job.attempts = "running", attempt
        return JobProgress(self.store, job.id, job.kind, self.settings.progress_interval_s, attempt,
                           self.settings.log_loss_every, started_at, drain_of=worker_id(os.getppid()),
                           reserve_s=self.settings.shutdown_reserve_s)

    @contextmanager
    def holding(self, job: JobRecord, progress: JobProgress):
        """While the job runs: its heartbeat; an engine run suspended for the worker's shutdown gives it back."""
        try:
            with Heartbeat(progress, self.settings.heartbeat_interval_s):
                yield
        except engine.SuspendedError as exc:
            self.give_back(job, progress, exc.message)

    def give_back(self, job: JobRecord, progress: JobProgress, why: str) -> None:
        """Re-queue the job for another worker (the attempt is not counted against ``max_attempts``)."""
        from worker.celery_app import app

        note = f"attempt {job.attempts}'s worker is shutting down; {why}; given back"
        device_s = progress.metrics(job.created_at, job.device_s)["device_s"]
        try:
            given = requeue(self.store, app, self.settings, job, note, given_back=job.given_back + 1,
                            device_s=device_s)
        except Exception:  # the broker is down: the job waits, running without a heartbeat, for a reaper
            log.exception("job %s: its give-back could not be sent", job.id)
            return
        if given:
            log.warning("job %s: %s", job.id, note)
        else:
            log.info("job %s: attempt %d no longer holds it; not given back", job.id, job.attempts)

    def finish(self, job: JobRecord, status: str, error: ErrorInfo | None = None, result: dict | None = None,
               customization: dict | None = None) -> None:
        """End the job (and a customize job's customization, in the same write) while this attempt holds it."""
        allowed, attempt = (["running"], job.attempts) if job.status == "running" else (["queued"], None)
        if not self.store.finish(job.id, status, allowed, attempt, error=error, result=result,
                                 customization=customization):
            log.info("job %s: attempt %d no longer holds it; %s not recorded", job.id, job.attempts, status)
            return
        if (run := telemetry.current_run()) is not None:
            run.ended(status, error)
        log.info("job %s %s%s", job.id, status, f" ({error.code}: {error.message})" if error else "")

    def run(self, kind: str, token: str, body) -> None:
        """One turn of the `kind` queue (the task's message; `token` is the job it was sent for): start the
        fair pick of the job store, else `token` itself. A generation turn that finds only jobs waiting for
        their customization is kept (`WaitForCustomization`: the task comes back later), so none is left
        without one."""
        queue = self.settings.queue_for(kind)
        for _ in range(PICKS_PER_TURN):
            job_id = self.store.next_fair(queue)
            if job_id is None:
                if self.store.is_queued(token):
                    job_id = token
                elif kind == "generate" and self.store.queued_depth(queue):
                    raise WaitForCustomization("a turn kept for the jobs that wait")
                else:
                    return
            try:
                self._run_one(job_id, body, same_turn=job_id == token)
                return
            except NotQueued:
                continue
            except WaitForCustomization:
                self.store.defer(job_id, self.settings.wait_poll_s)
                raise

    def _run_one(self, job_id: str, body, same_turn: bool) -> None:
        """Load, start, run `body`, map errors to the job's final state; in the job's log context and span
        (`worker.telemetry`; `same_turn`: the job is the one the task was sent for)."""
        job = self.store.get_job(job_id)
        if job is None or job.status in TERMINAL:
            log.info("job %s: nothing to do (%s)", job_id, "unknown" if job is None else job.status)
            return
        scratch = self.workdir / "jobs" / job_id
        with telemetry.job_scope(job, same_turn):
            try:
                body(job, scratch)
            except (WaitForCustomization, NotQueued):
                raise
            except Exception as exc:
                status, error = job_outcome(exc)
                if error.code == "internal":
                    log.exception("job %s failed", job_id)
                self.finish(job, status, error)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    def upload_dir(self, directory: Path, prefix: str, last: str | None = None) -> list[str]:
        """Upload every file under `directory`; the file named `last` (the manifest) goes last."""
        files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
        files.sort(key=lambda p: p.name == last)
        written = []
        for path in files:
            key = prefix + path.relative_to(directory).as_posix()
            self.storage.put_file(path, key, CONTENT_TYPES.get(path.suffix))
            written.append(key)
        return written

    # ---- customize --------------------------------------------------------------------------------
    def run_customize(self, job_id: str) -> None:
        self.run("customize", job_id, self._customize)

    def _customize(self, job: JobRecord, scratch: Path) -> None:
        reporter = self.start(job)
        with self.holding(job, reporter):
            self._customize_running(job, scratch, reporter)

    def _customize_running(self, job: JobRecord, scratch: Path, reporter: JobProgress) -> None:
        reporter.set_stage("fetch")  # the customization is "training" since `start`
        customization_id = job.customization_id
        assert customization_id is not None  # a customize job is created with its customization
        base = self.base()
        checkpoint = self.checkpoint(job.params["checkpoint_sha256"])
        train = train_spec(job.params["config"], self.settings)
        motion_key = engine.motion_adapter_key(base, train)
        motion_root = self.motion_cache(motion_key)
        shutil.rmtree(scratch, ignore_errors=True)
        out_dir, state_dir = scratch / "customization", scratch / "train-state"
        resume_step = train_state.fetch(self.storage, customization_id, state_dir)
        if resume_step:
            log.info("job %s attempt %d resumes training from step %d", job.id, job.attempts, resume_step)
            reporter.log(f"attempt {job.attempts} resumes training from step {resume_step} (a stored state)")
        manifest = engine.customize(base, checkpoint, train, out_dir, motion_root, progress=reporter.progress,
                                    should_cancel=reporter.should_cancel, state_dir=state_dir,
                                    on_checkpoint=lambda d: train_state.save(self.storage, customization_id, d),
                                    on_loss=reporter.loss, should_suspend=reporter.should_suspend)
        reporter.set_stage("upload")
        if manifest.get("motion_adapter", {}).get("trained_now"):
            self.upload_dir(motion_root / motion_key, keys.motion_adapter_prefix(motion_key),
                            last=engine.MOTION_META_FILE)
        self.upload_dir(out_dir, keys.customization_prefix(customization_id), last=engine.MANIFEST_FILE)
        train_state.drop(self.storage, customization_id)
        result = {"customization_id": customization_id,
                  **keys.customization_artifact_keys(customization_id, manifest),
                  "metrics": reporter.metrics(job.created_at, job.device_s)}
        self.finish(job, "succeeded", result=result, customization={"manifest": manifest})

    # ---- generate ---------------------------------------------------------------------------------
    def run_generate(self, job_id: str) -> None:
        self.run("generate", job_id, self._generate)

    def _generate(self, job: JobRecord, scratch: Path) -> None:
        """A job of the generate queue: a generation or an evaluation, once its customization is ready."""
        if job.customization_id:
            record = self.store.get_customization(job.customization_id)
            if record is None:
                raise CustomizationFailed(f"customization {job.customization_id!r} no longer exists")
            if record.status in ("failed", "canceled"):
                why = f": {record.error.message}" if record.error else ""
                raise CustomizationFailed(f"customization {job.customization_id!r} {record.status}{why}")
            if record.status != "ready":
                if job.stage != "waiting_for_customization":
                    self.store.update_job(job.id, stage="waiting_for_customization")
                    self.store.add_event(job.id, events.stage_event(
                        "waiting_for_customization",
                        f"waiting for customization {job.customization_id} ({record.status})"))
                raise WaitForCustomization(job.customization_id)
        reporter = self.start(job)
        with self.holding(job, reporter):
            if job.kind == "evaluate":
                run_evaluation(self, job, scratch, reporter)
            else:
                self._generate_running(job, scratch, reporter)

    def _generate_running(self, job: JobRecord, scratch: Path, reporter: JobProgress) -> None:
        params = job.params
        reporter.progress("load", 0, 1)
        base = self.base()
        custom = None
        if job.customization_id and params["method"] != "base":
            custom = self.customization(job.customization_id, base)
        shutil.rmtree(scratch, ignore_errors=True)
        request = GenerateRequest.model_validate(params)
        controlnet = self.controlnet(request.control.controlnet_name(), base) if request.control else None
        annotator = self.annotator(request.control.type, base) if request.control else None
        motion_lora = self.motion_lora(request.motion_lora, base) if request.motion_lora else None
        sample = sample_spec(request, self.inputs(job, scratch / "inputs"))
        reporter.progress("load", 1, 1)
        out = engine.generate(base, custom, sample, scratch / "video", progress=reporter.progress,
                              should_cancel=reporter.should_cancel, controlnet=controlnet,
                              should_suspend=reporter.should_suspend, annotator=annotator,
                              motion_lora=motion_lora)
        reporter.set_stage("upload")
        prefix = keys.video_prefix(job.id)
        stored = {"video_key": prefix + Path(out["video"]).name, "poster_key": prefix + "poster.png"}
        if out.get("control"):  # the conditioning frames used, with the result
            stored["control_key"] = prefix + Path(out["control"]).name
        for name, key in stored.items():
            path = Path(out[name.removesuffix("_key")])
            self.storage.put_file(path, key, CONTENT_TYPES.get(path.suffix))
        result = {**stored,
                  **{k: out[k] for k in ("seed", "num_frames", "height", "width", "fps", "format", "scheduler",
                                         "motion_adapter_scale", "context_length", "context_stride",
                                         "motion_lora", "motion_lora_scale", "timings")
                     if k in out}, "method": out.get("method", params["method"]),
                  "metrics": reporter.metrics(job.created_at, job.device_s)}
        self.finish(job, "succeeded", result=result)


_runner: Runner | None = None


def get_runner() -> Runner:
    """The process's runner (created on first use, in the pool process)."""
    global _runner
    if _runner is None:
        _runner = Runner(get_settings())
    return _runner
