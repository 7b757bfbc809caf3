"""A generation's control and init: which stored video each reads, and whether this deployment can run them."""

from __future__ import annotations

from common.errors import Conflict, InvalidArgument, NotFound
from common.files import file_key, get_file
from common.jobstore import JobStore
from common.presets import WEIGHTED_ANNOTATOR_TYPES
from common.schemas import GenerateRequest, MediaRef
from common.settings import Settings


def source(ref: MediaRef, owner: str, store: JobStore, field: str) -> dict:
    """``{"key", "frames"}`` of the caller's file or succeeded generation that `ref` names (404 otherwise)."""
    if ref.file is not None:
        record = get_file(store, ref.file, owner, field=f"{field}.file")
        return {"key": record.key, "frames": record.frames}
    assert ref.job_id is not None  # the schema asks for exactly one of file and job_id
    job = store.get_job(ref.job_id, owner=owner)
    if job is None:
        raise NotFound(f"no job {ref.job_id!r}", field=f"{field}.job_id")
    if job.kind != "generate":
        raise InvalidArgument(f"{field}.job_id: job {job.id!r} is a {job.kind} job; only a generation has a video",
                              field=f"{field}.job_id")
    if job.status != "succeeded" or not job.result:
        raise Conflict(f"{field}.job_id: job {job.id!r} is {job.status}; its video is there once it succeeds",
                       code="input_not_ready", field=f"{field}.job_id")
    return {"key": job.result["video_key"], "frames": job.result["num_frames"]}


def control_types(settings: Settings) -> list[str]:
    """The control types served here: canny and precomputed, and each whose annotator weights are configured."""
    annotated = [t for t in WEIGHTED_ANNOTATOR_TYPES if t in settings.annotators()]
    return ["canny", *annotated, "precomputed"]


def check_control(body: GenerateRequest, settings: Settings) -> None:
    """422 unless the control's type is computed here (canny, or its annotator is configured) or precomputed, and
    its ControlNet is served."""
    control = body.control
    if control is None:
        return
    if control.type not in control_types(settings):
        why = "its annotator weights are not configured on this deployment (annotator_models)"
        raise InvalidArgument(f"control.type={control.type!r}: {why}; served: {', '.join(control_types(settings))}. "
                              "Send the conditioning frames yourself with type=precomputed and a controlnet that "
                              "reads them", field="control.type", code="control_type_unavailable")
    served = settings.controlnets()
    name = control.controlnet_name()
    if name not in served:
        field = "control.controlnet" if control.controlnet else "control.type"
        raise InvalidArgument(f"{field}: no ControlNet {name!r} is served here (served: "
                              f"{', '.join(sorted(served)) or 'none'})", field=field, code="control_type_unavailable")


def check_motion_lora(body: GenerateRequest, settings: Settings) -> None:
    """422 naming ``motion_lora`` unless it is one of the motion LoRAs this deployment serves (its allow-list):
    the worker never downloads or opens anything else."""
    served = settings.motion_loras()
    if body.motion_lora is not None and body.motion_lora not in served:
        raise InvalidArgument(f"motion_lora={body.motion_lora!r} is not served here (served: "
                              f"{', '.join(served) or 'none'}; GET /limits)", field="motion_lora")


def resolve(body: GenerateRequest, owner: str, store: JobStore) -> dict | None:
    """The stored sources of the body's control and init, as the job record's ``inputs`` (None without)."""
    inputs = {name: source(ref, owner, store, name) for name, ref in (("control", body.control), ("init", body.init))
              if ref is not None}
    return inputs or None


def needs(body: GenerateRequest) -> list[tuple[str, str]]:
    """The file records the body's control and init read, as `JobStore.create_job`'s ``needs``: creating the job
    checks they still exist, atomically with a deletion's check that no queued job reads them."""
    return [(file_key(ref.file), f"{name}.file") for name, ref in (("control", body.control), ("init", body.init))
            if ref is not None and ref.file is not None]
