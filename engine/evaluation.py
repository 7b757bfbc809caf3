"""Side-by-side evaluation: one prompt and seed rendered four ways, a contact sheet and metrics.

Rows: base T2V, naive injection, Still-Moving, Still-Moving trained without the Motion Adapter. Every preset gets
the model-free measures (`engine.metrics`); the shapes world adds its judge's (`engine.shapes.measures`: the look,
shape and colour asked for, centroid motion and direction, one object, unreadable frames), and real weights
CLIP-I / CLIP-T when a CLIP model is given.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine import export, metrics
from engine.artifact import MANIFEST, Customization, load_customization
from engine.customize import customize
from engine.models import BaseModels
from engine.progress import Reporter
from engine.sampling import render_frames
from engine.specs import SampleSpec, TrainSpec

ROWS = ("base", "naive", "still-moving", "still-moving-no-motion-adapter")
LABEL_WIDTH = 200
ABLATION_DIR = "no-motion-adapter"  # under the out dir: the ablation's artifact (a caller may put a stored one there)
ROWS_DIR = "rows"  # under the out dir: ``<row>.mp4`` and its poster ``<row>.png``


def _renamed(reporter: Reporter, pattern: str):
    """The reporter's progress callback with each stage named ``pattern.format(stage)`` (None without one)."""
    if reporter.progress is None:
        return None
    progress = reporter.progress
    return lambda stage, step, total: progress(pattern.format(stage), step, total)


def _train_spec(manifest: dict) -> TrainSpec:
    from engine.specs import MotionAdapterSpec

    settings = dict(manifest["settings"])
    settings["prompts"] = tuple(settings["prompts"])
    motion = dict(settings.pop("motion"))
    motion["prompts"] = tuple(motion["prompts"])
    return TrainSpec(**settings, motion=MotionAdapterSpec(**motion))


def ablation(base: BaseModels, custom: Customization, checkpoint: Path, work_dir: Path,
             reporter: Reporter) -> Customization:
    """The same customization trained without the Motion Adapter (trained once, then reused)."""
    target = work_dir / ABLATION_DIR
    if not (target / MANIFEST).exists():
        spec = replace(_train_spec(custom.manifest), use_motion_adapter=False, preview=False,
                       exports=False)
        customize(base, checkpoint, spec, target, work_dir / "unused-motion-cache",
                  progress=_renamed(reporter, "ablation_{}"), should_cancel=reporter.should_cancel)
    return load_customization(base, target, checkpoint)


def contact_sheet(rows: dict[str, np.ndarray], path: Path) -> Path:
    """PNG grid: one row per method (labelled), one column per frame."""
    first = next(iter(rows.values()))
    frames, h, w = first.shape[:3]
    sheet = Image.new("RGB", (LABEL_WIDTH + frames * w, len(rows) * h), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, video) in enumerate(rows.items()):
        draw.text((6, r * h + h // 2 - 6), name, fill="black")
        for f in range(frames):
            sheet.paste(Image.fromarray(video[f]), (LABEL_WIDTH + f * w, r * h))
    sheet.save(path)
    return path


def _world_judge(base: BaseModels):
    """The shapes world's judge when `base` is the committed world (its truth is what the measures read)."""
    if base.spec.identity().get("preset") != "shapes" or "revision" not in base.spec.identity():
        return None
    from engine.shapes import judge
    from engine.shapes.paths import JUDGE_DIR

    return judge.Judge.load(JUDGE_DIR)


def world_measures(video: np.ndarray, judge, prompt: str) -> dict[str, float]:
    """The shapes world's measures of one video against what `prompt` asks (`measures.parse_prompt`), under
    ``world_*`` names; those the prompt or the video leaves undefined are left out."""
    from engine.shapes import measures

    values = measures.video_measures(video, judge, measures.parse_prompt(prompt))
    return {f"world_{k}": round(v, 4) for k, v in values.items() if v is not None and k != "pixel_motion"}


def evaluate(base: BaseModels, custom_dir: Path, checkpoint: Path, prompt: str, out_dir: Path, seed: int = 0,
             num_frames: int | None = None, steps: int | None = None, progress=None, should_cancel=None,
             clip_model: str | None = None, local_files_only: bool = False, fps: int = 8) -> dict:
    """Render the four rows, write ``contact_sheet.png``, ``metrics.json`` and each row's video (``rows/<row>.mp4``
    and its poster ``.png``, at `fps`) into `out_dir`. Progress stages: ``ablation_<stage>`` while the ablation
    trains (skipped when ``out_dir/no-motion-adapter`` holds it already), then ``render_<row>`` per row.

    With `clip_model` (hub id or local directory of CLIP weights) CLIP-I and CLIP-T are added per row.

    Returns:
        ``{"metrics": {method: {motion, temporal_consistency, fidelity_proxy}}, "contact_sheet": path,
        "videos": {method: {"video": path, "poster": path}}, "ablation_trained": bool, ...}``
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(progress, should_cancel)
    custom = load_customization(base, custom_dir, checkpoint)
    ablation_trained = not (out_dir / ABLATION_DIR / MANIFEST).exists()
    no_ma = ablation(base, custom, checkpoint, out_dir, reporter)
    references = [Image.open(Path(custom_dir) / i["file"]).convert("RGB") for i in custom.manifest["images"]]
    size = custom.manifest["resolved"]
    spec = SampleSpec(prompt=prompt, seed=seed, num_frames=num_frames or size["num_frames"], steps=steps,
                      height=size["height"], width=size["width"])
    plan = {"base": (None, "base"), "naive": (custom, "naive"), "still-moving": (custom, "still-moving"),
            "still-moving-no-motion-adapter": (no_ma, "still-moving")}
    world_judge = _world_judge(base)
    scorer = None
    if clip_model:
        from engine.clip_scores import ClipScorer

        scorer = ClipScorer.load(clip_model, local_files_only=local_files_only)
    videos, results, files = {}, {}, {}
    for name, (model, method) in plan.items():
        frames, _ = render_frames(base, model, replace(spec, method=method),
                                  Reporter(_renamed(reporter, f"render_{name}"), should_cancel))
        videos[name] = export.to_uint8(frames)
        video, poster = export.write_video(videos[name], out_dir / ROWS_DIR, name, "mp4", fps)
        files[name] = {"video": str(video), "poster": str(poster)}
        results[name] = {"motion": metrics.motion(videos[name]),
                         "temporal_consistency": metrics.temporal_consistency(videos[name]),
                         "fidelity_proxy": metrics.fidelity_proxy(videos[name], references)}
        if world_judge is not None:
            results[name].update(world_measures(videos[name], world_judge, prompt))
        if scorer is not None:
            results[name].update(scorer.scores(videos[name], references, prompt))
    sheet = contact_sheet(videos, out_dir / "contact_sheet.png")
    report = {"prompt": prompt, "seed": seed, "rows": list(ROWS), "metrics": results,
              "fidelity": f"CLIP-I/CLIP-T with {clip_model}" if clip_model else
              "the shapes world's judge (engine/shapes/measures.py)" if world_judge is not None else
              "model-free proxy (see engine/metrics.py); pass clip_model for CLIP-I/CLIP-T",
              "contact_sheet": str(sheet), "videos": files, "num_frames": spec.num_frames,
              "ablation_trained": ablation_trained}
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    return report
