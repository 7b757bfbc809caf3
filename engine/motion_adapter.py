"""The Motion Adapter: trained once per base model on frozen videos of base-T2I stills, then reused.

It depends on the base T2V model, not on the customization, so it is cached under a key of
(base model, adapter settings, video size) and every customization on that base shares it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from engine import adapters, frozen_videos
from engine.models import BaseModels, make_training_scheduler
from engine.progress import Reporter
from engine.specs import TrainSpec
from engine.training import TrainData, train_adapter

ADAPTER_FILE = "motion_adapter.safetensors"
META_FILE = "meta.json"


def motion_adapter_key(base: BaseModels, train: TrainSpec) -> str:
    """Cache key of the Motion Adapter that `customize(base, …, train)` uses."""
    return train.motion.cache_key(base.spec, stills_inputs(base, train))


def stills_inputs(base: BaseModels, train: TrainSpec) -> dict:
    """Everything that shapes the Motion Adapter's training stills (and so the adapter) besides its own settings."""
    size = resolved_size(base, train)
    return {"size": [size["num_frames"], size["height"], size["width"]], "prompts": list(motion_prompts(base, train)),
            "image_steps": size["image_steps"], "image_guidance_scale": size["image_guidance_scale"],
            "image_batch_size": train.image_batch_size}


def motion_prompts(base: BaseModels, train: TrainSpec) -> tuple[str, ...]:
    """The spec's generic prompts, else the preset's (stills of the base's own world)."""
    return train.motion.prompts or base.defaults.motion_prompts


def resolved_size(base: BaseModels, train: TrainSpec) -> dict:
    """Training video size, image steps and stills' guidance with the preset's defaults filled in."""
    return base.defaults.fill(height=train.height, width=train.width, num_frames=train.num_frames,
                              image_steps=train.image_steps, image_guidance_scale=train.image_guidance_scale)


def ensure_motion_adapter(base: BaseModels, train: TrainSpec, cache_dir: Path, reporter: Reporter) -> tuple[Path, bool]:
    """Return (path of the cached Motion Adapter file, whether it was trained now)."""
    key = motion_adapter_key(base, train)
    target = Path(cache_dir) / key
    if (target / ADAPTER_FILE).exists() and (target / META_FILE).exists():
        reporter.step("motion_adapter", 1, 1)
        return target / ADAPTER_FILE, False
    spec, size = train.motion, resolved_size(base, train)
    stills = frozen_videos.sample_stills(
        base.components, motion_prompts(base, train), spec.num_images, spec.seed, size["height"], size["width"],
        size["image_steps"], size["image_guidance_scale"], "", reporter, stage="motion_adapter_images",
        batch_size=train.image_batch_size,
    )
    data = frozen_videos.train_data(base.components, stills, size["num_frames"])
    unet = base.base_motion_unet()
    config, result = train_motion_lora(base, unet, data, spec, reporter)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{key}-"))
    adapters.save_adapter(unet, adapters.MOTION, config, staging / ADAPTER_FILE)
    settings = _jsonable(spec) | {"prompts": list(motion_prompts(base, train))}
    (staging / META_FILE).write_text(json.dumps({"key": key, "model": base.spec.identity(), "size": size,
                                                 "settings": settings, "losses": result.losses}))
    if target.exists():
        shutil.rmtree(staging)  # another job wrote it meanwhile; keep the first
    else:
        staging.rename(target)
    return target / ADAPTER_FILE, True


def train_motion_lora(base: BaseModels, unet, data: TrainData, spec, reporter: Reporter,
                      stage: str = "motion_adapter"):
    """Attach a fresh Motion Adapter to `unet` and train it to fit the frozen videos `data` -> (config, result)."""
    config = adapters.motion_lora_config(spec.rank)
    adapters.add_adapter(unet, adapters.MOTION, config, seed=spec.seed)
    result = train_adapter(unet, adapters.MOTION, data, make_training_scheduler(base), spec.train_steps,
                           spec.learning_rate, spec.batch_size, spec.seed, reporter, stage=stage)
    return config, result


def _jsonable(spec) -> dict:
    from dataclasses import asdict

    return asdict(spec)
