"""The Still-Moving recipe: inject, make frozen videos, train Spatial Adapters with the Motion Adapter on.

    customized T2I ──sample N stills──▶ frozen videos (latent repeated over F frames)
    AnimateDiff(customized spatial) + Motion Adapter (frozen) + Spatial Adapter (trained, zero-init)
    drop the Motion Adapter ──▶ spatial_adapter.safetensors + manifest + preview
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

from engine import adapters, exports, frozen_videos
from engine.artifact import MOTION_ADAPTER, SPATIAL_ADAPTER, Customization, versions, write_manifest
from engine.checkpoints import file_sha256, load_customized_t2i
from engine.errors import SpecError
from engine.models import BaseModels, build_motion_unet, check_num_frames, make_training_scheduler
from engine.motion_adapter import META_FILE as MOTION_META
from engine.motion_adapter import (
    ensure_motion_adapter,
    motion_adapter_key,
    motion_prompts,
    resolved_size,
    train_motion_lora,
)
from engine.progress import Reporter
from engine.sampling import render_frames
from engine.specs import SampleSpec, TrainSpec
from engine.training import train_adapter


def validate_train_spec(base: BaseModels, train: TrainSpec) -> dict[str, int]:
    """Check ranges (naming the field and value) and return the resolved video size."""
    checks = [
        ("prompts", len(train.prompts) >= 1 and all(p.strip() for p in train.prompts), "need 1+ non-empty prompts"),
        ("num_images", train.num_images >= 1, "must be >= 1"),
        ("train_steps", train.train_steps >= 1, "must be >= 1"),
        ("rank", 1 <= train.rank <= 256, "must be in 1..256"),
        ("learning_rate", 0 < train.learning_rate <= 1, "must be in (0, 1]"),
        ("batch_size", train.batch_size >= 1, "must be >= 1"),
        ("image_batch_size", train.image_batch_size >= 1, "must be >= 1"),
        ("prior_preservation_weight", 0 <= train.prior_preservation_weight <= 10, "must be in 0..10"),
        ("prior_num_images", train.prior_num_images >= 1, "must be >= 1"),
    ]
    for name, ok, why in checks:
        if not ok:
            raise SpecError(f"{name}={getattr(train, name)!r}: {why}", field=name)
    size = resolved_size(base, train)
    check_num_frames(base, size["num_frames"])
    for name in ("height", "width"):
        if size[name] % 8:
            raise SpecError(f"{name}={size[name]} must be a multiple of 8", field=name)
    return size


def _save_stills(stills: frozen_videos.Stills, out_dir: Path) -> list[dict]:
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i, (image, prompt, seed) in enumerate(zip(stills.images, stills.prompts, stills.seeds)):
        name = f"images/{i:03d}.png"
        image.save(out_dir / name)
        records.append({"file": name, "prompt": prompt, "seed": seed})
    return records


def customize(
    base: BaseModels,
    checkpoint_path: Path,
    train: TrainSpec,
    out_dir: Path,
    motion_cache_dir: Path,
    progress=None,
    should_cancel=None,
    state_dir: Path | None = None,
    on_checkpoint=None,
    on_loss=None,
    should_suspend=None,
) -> dict:
    """Run a Still-Moving customization and write its artifact directory; return the manifest.

    Args:
        base: loaded base models (`load_base_models`).
        checkpoint_path: the customized T2I upload (.safetensors: LoRA, diffusers UNet or LDM single file).
        train: settings; sizes of None take the preset's defaults.
        out_dir: where the artifact goes (created).
        motion_cache_dir: Motion Adapter cache; loaded from ``<dir>/<key>/`` or trained and written there.
        progress: ``progress(stage, step, total)``; should_cancel: polled between steps.
        state_dir: resume state of spatial training, saved every ``train.checkpoint_every`` steps.
        on_checkpoint: called with ``state_dir`` after each save (e.g. to upload it).
        on_loss: ``on_loss(stage, step, total, loss)`` after each training step (Motion and Spatial Adapters).
        should_suspend: polled between steps; True stops the run with `SuspendedError`, a Spatial Adapter
            training saving its resume state (``state_dir``, then ``on_checkpoint``) at the step it is at first.
    """
    reporter = Reporter(progress, should_cancel, on_loss, should_suspend)
    size = validate_train_spec(base, train)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = round(now - clock, 4)
        clock = now

    reporter.step("load", 0, 1)
    fmt, components = load_customized_t2i(base.components, Path(checkpoint_path), base.unet_config_dir)
    reporter.step("load", 1, 1)
    lap("load")

    shared = train.use_motion_adapter and train.motion_adapter_source == "shared"
    motion_path, trained_now, motion_losses = None, False, None
    if shared:
        motion_path, trained_now = ensure_motion_adapter(base, train, motion_cache_dir, reporter)
        motion_losses = json.loads((motion_path.parent / MOTION_META).read_text()).get("losses")
    lap("motion_adapter")

    stills = frozen_videos.sample_stills(
        components, train.prompts, train.num_images, train.seed, size["height"], size["width"],
        size["image_steps"], size["image_guidance_scale"], train.negative_prompt, reporter,
        batch_size=train.image_batch_size,
    )
    images = _save_stills(stills, out_dir)
    lap("sample_images")

    data = frozen_videos.train_data(components, stills, size["num_frames"])
    prior = None
    if train.prior_preservation_weight > 0:
        prior = _prior_videos(base, train, size, reporter)
        lap("prior_images")
    unet = build_motion_unet(base, components["unet"])
    active = []
    if motion_path is not None:
        adapters.load_adapter(unet, adapters.MOTION, motion_path)
        active.append(adapters.MOTION)
    elif train.use_motion_adapter:  # this customization's own, on its frozen videos over its spatial layers
        motion_config, motion_result = train_motion_lora(base, unet, data, train.motion, reporter,
                                                         stage="own_motion_adapter")
        motion_losses = motion_result.losses
        motion_path, trained_now = adapters.save_adapter(unet, adapters.MOTION, motion_config,
                                                         out_dir / MOTION_ADAPTER), True
        active.append(adapters.MOTION)
        lap("motion_adapter")
    config = adapters.spatial_lora_config(train.rank, train.train_resnets, train.train_projections,
                                          train.train_feedforward)
    adapters.add_adapter(unet, adapters.SPATIAL, config, seed=train.seed)
    adapters.activate(unet, active + [adapters.SPATIAL])
    lap("prepare")

    if prior is not None:  # for the Spatial Adapters only; a Motion Adapter of its own fits the customized videos
        data = replace(data, prior=prior["data"], prior_weight=train.prior_preservation_weight)
    result = train_adapter(unet, adapters.SPATIAL, data, make_training_scheduler(base), train.train_steps,
                           train.learning_rate, train.batch_size, train.seed, reporter, stage="train",
                           state_dir=state_dir, checkpoint_every=train.checkpoint_every,
                           on_checkpoint=on_checkpoint)
    lap("train")

    check = None
    if motion_path is not None and train.check_motion_adapter:
        check = _motion_check(base, components, unet, train, size, reporter)
        lap("motion_check")
    if motion_path is not None:
        unet.delete_adapters(adapters.MOTION)  # test time: the motion prior of the T2V model comes back
    adapters.activate(unet, [adapters.SPATIAL])
    adapters.save_adapter(unet, adapters.SPATIAL, config, out_dir / SPATIAL_ADAPTER)

    preview = None
    if train.preview:
        custom = Customization(manifest={}, components=components, unet=unet, directory=out_dir)
        sample = SampleSpec(prompt=train.prompts[0], seed=train.seed, num_frames=size["num_frames"],
                            height=size["height"], width=size["width"])
        from engine import export

        frames, _ = render_frames(base, custom, sample, reporter.with_progress(_preview_progress(reporter)))
        export.write_video(export.to_uint8(frames), out_dir, "preview", "mp4", sample.fps)
        preview = {"video": "preview.mp4", "poster": "preview.png", "prompt": sample.prompt, "seed": sample.seed}
    lap("preview")

    manifest = {
        "checkpoint": {"sha256": file_sha256(Path(checkpoint_path)), "format": fmt},
        "model": base.spec.identity(),
        "settings": asdict(train),
        "resolved": size,
        "motion_adapter": {
            "used": motion_path is not None,
            "source": train.motion_adapter_source if motion_path is not None else None,
            "key": motion_adapter_key(base, train) if shared else None,
            "file": MOTION_ADAPTER if motion_path is not None and not shared else None,
            "prompts": list(motion_prompts(base, train) if shared else train.prompts),
            "trained_now": trained_now,
            "check": check,
            "loss_curve": motion_losses,  # its training's, per step (the shared one's from its cache entry)
        },
        "spatial_adapter": {"file": SPATIAL_ADAPTER, "sha256": file_sha256(out_dir / SPATIAL_ADAPTER),
                            "rank": train.rank, "target_modules": config.target_modules},
        "images": images,
        "prior_preservation": None if prior is None else {"weight": train.prior_preservation_weight,
                                                          "images": prior["images"]},
        "loss_curve": result.losses,
        "resumed_from_step": result.resumed_from,
        "preview": preview,
        "timings": timings,
        "versions": versions(),
    }
    if train.exports:
        manifest["exports"] = _write_exports(base, train, size, out_dir, manifest)
        lap("exports")
    write_manifest(out_dir, manifest)
    reporter.step("done", 1, 1)
    return manifest


def _write_exports(base: BaseModels, train: TrainSpec, size: dict, out_dir: Path, manifest: dict) -> dict:
    """The Spatial Adapter's exports (`engine.exports`), their README and workflow sampling the first prompt
    at the training size and the preset's steps and guidance."""
    sample = {"prompt": train.prompts[0], "negative_prompt": train.negative_prompt, "seed": train.seed,
              **base.defaults.fill(num_frames=size["num_frames"], height=size["height"], width=size["width"],
                                   steps=None, guidance_scale=None)}
    return exports.write_exports(out_dir, manifest, sample, base.spec.sources())


def _prior_videos(base: BaseModels, train: TrainSpec, size: dict, reporter: Reporter) -> dict:
    """Frozen videos of *base*-T2I stills of the preset's generic prompts (seeds after the customized stills')."""
    stills = frozen_videos.sample_stills(
        base.components, motion_prompts(base, train), train.prior_num_images, train.seed + train.num_images,
        size["height"], size["width"], size["image_steps"], size["image_guidance_scale"], "", reporter,
        stage="prior_images", batch_size=train.image_batch_size,
    )
    data = frozen_videos.train_data(base.components, stills, size["num_frames"])
    return {"data": data, "images": [{"prompt": p, "seed": s} for p, s in zip(stills.prompts, stills.seeds)]}


def _motion_check(base: BaseModels, components: dict, unet, train: TrainSpec, size: dict, reporter: Reporter) -> dict:
    """Does the Motion Adapter still freeze motion over *these* spatial layers? One video at scale 1 and one at
    scale 0 (Spatial Adapters on), same prompt and seed; their mean frame-to-frame change (`metrics.motion`)."""
    from engine import metrics

    custom = Customization(manifest={}, components=components, unet=unet)
    sample = SampleSpec(prompt=train.prompts[0], seed=train.seed, num_frames=size["num_frames"],
                        height=size["height"], width=size["width"])
    out = {"prompt": sample.prompt, "seed": sample.seed}
    for name, scale in (("motion_at_scale_1", 1.0), ("motion_at_scale_0", 0.0)):
        frames, _ = render_frames(base, custom, replace(sample, motion_adapter_scale=scale),
                                  reporter.with_progress(_preview_progress(reporter, "motion_check")))
        out[name] = round(metrics.motion(frames), 6)
    adapters.activate(unet, [adapters.SPATIAL, adapters.MOTION])
    return out


def _preview_progress(reporter: Reporter, stage_name: str = "preview"):
    def forward(stage: str, step: int, total: int) -> None:
        if reporter.progress is not None:
            reporter.progress(stage_name if stage == "denoise" else stage, step, total)

    return forward
