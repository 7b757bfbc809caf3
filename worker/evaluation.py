"""An evaluation job (``POST /evaluations``): the engine's four rows for the customization, stored with the job.

The ablation row (the customization trained again without the Motion Adapter) is the expensive part and the
same for every evaluation of one customization, so it is stored once under the customization
(``customizations/<id>/no-motion-adapter/``, manifest last; deleted with it) and fetched by later evaluations.
The contact sheet and each row's video and poster go under ``videos/<job_id>/``, as a
generation's video does (deleted with the job, collected once its record is gone).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import engine
from common import storage as keys
from common.errors import CustomizationFailed
from common.schemas import EvaluationRequest, JobRecord
from common.storage import CONTENT_TYPES
from engine.evaluation import ABLATION_DIR, evaluate
from worker.progress import JobProgress

if TYPE_CHECKING:
    from worker.runner import Runner


def run_evaluation(runner: Runner, job: JobRecord, scratch: Path, reporter: JobProgress) -> None:
    """Fetch the customization (and its stored ablation), render the rows, store them, finish the job."""
    reporter.set_stage("fetch")
    request = EvaluationRequest.model_validate(job.params)
    record = runner.store.get_customization(request.customization_id)
    if record is None:  # the runner saw it ready; a deletion waits for the jobs that use it, so this is a bug
        raise CustomizationFailed(f"customization {request.customization_id!r} no longer exists")
    base = runner.base()
    directory = runner.customization_files(record.id, images=True)
    checkpoint = runner.checkpoint(record.checkpoint_sha256)
    out = scratch / "evaluation"
    ablation_prefix = f"{keys.customization_prefix(record.id)}{ABLATION_DIR}/"
    runner.fetch_prefix(ablation_prefix, out / ABLATION_DIR, {engine.MANIFEST_FILE, engine.SPATIAL_ADAPTER_FILE})
    report = evaluate(base, directory, checkpoint, request.prompt, out, seed=job.params["seed"],
                      num_frames=request.num_frames, steps=request.steps, progress=reporter.progress,
                      should_cancel=reporter.should_cancel, clip_model=runner.settings.evaluation_clip_model,
                      local_files_only=runner.settings.local_files_only)
    reporter.set_stage("upload")
    if report["ablation_trained"]:
        runner.upload_dir(out / ABLATION_DIR, ablation_prefix, last=engine.MANIFEST_FILE)
    prefix = keys.video_prefix(job.id)

    def put(path: str | Path) -> str:
        path = Path(path)
        key = prefix + path.relative_to(out).as_posix()
        runner.storage.put_file(path, key, CONTENT_TYPES.get(path.suffix))
        return key

    rows = [{"name": name, "video_key": put(report["videos"][name]["video"]),
             "poster_key": put(report["videos"][name]["poster"]), "measures": report["metrics"][name]}
            for name in report["rows"]]
    result = {"contact_sheet_key": put(report["contact_sheet"]), "rows": rows, "prompt": request.prompt, "seed": job.params["seed"], "num_frames": report["num_frames"],
              "fidelity": report["fidelity"], "ablation_trained": report["ablation_trained"],
              "metrics": reporter.metrics(job.created_at, job.device_s)}
    runner.finish(job, "succeeded", result=result)
