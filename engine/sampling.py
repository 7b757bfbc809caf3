"""Video sampling with AnimateDiff: base, naive injection, or Still-Moving (spatial adapters on)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from diffusers import AnimateDiffPipeline

from engine import adapters, export
from engine.artifact import Customization
from engine.errors import SpecError
from engine.models import BaseModels, check_num_frames
from engine.progress import Reporter
from engine.specs import SampleSpec


def resolve_sample(base: BaseModels, sample: SampleSpec) -> dict:
    """The spec's size/frames/steps with the preset's defaults filled in, validated."""
    values = base.defaults.fill(num_frames=sample.num_frames, height=sample.height, width=sample.width,
                                steps=sample.steps)
    check_num_frames(base, values["num_frames"])
    if values["height"] % 8 or values["width"] % 8:
        raise SpecError(f"height/width must be multiples of 8, got {values['height']}x{values['width']}",
                        field="height" if values["height"] % 8 else "width")
    if sample.format not in ("mp4", "gif"):
        raise SpecError(f"format={sample.format!r}; expected 'mp4' or 'gif'", field="format")
    if sample.method not in ("still-moving", "naive", "base"):
        raise SpecError(f"method={sample.method!r}; expected still-moving, naive or base", field="method")
    if sample.motion_adapter_scale and sample.method == "base":
        raise SpecError("motion_adapter_scale needs a customization (its Motion Adapter); the base method has none",
                        field="motion_adapter_scale")
    return values


def _pick_model(base: BaseModels, custom: Customization | None, sample: SampleSpec):
    """Return (components, the UNet to call, method used) and set the adapters for the requested method:
    Still-Moving's Spatial Adapters (off for naive injection) and, at a non-zero `motion_adapter_scale`,
    the Motion Adapter (1 = the static videos it was trained for, negative = more motion than the base).

    The UNet to call is the `torch.compile`d one when the base's spec asks for it (`ModelSpec.compile_unet`).
    """
    if custom is None or sample.method == "base":
        return base.components, base.sampling_forward(), "base"
    unet = custom.unet
    names = [] if sample.method == "naive" else [adapters.SPATIAL]
    weights = [sample.spatial_adapter_scale] * len(names)
    if sample.motion_adapter_scale:
        if adapters.MOTION not in getattr(unet, "peft_config", {}):
            raise SpecError("motion_adapter_scale: this customization has no Motion Adapter loaded (trained "
                            "without one, or its file was not given)", field="motion_adapter_scale")
        names, weights = names + [adapters.MOTION], weights + [sample.motion_adapter_scale]
    if names:
        unet.enable_adapters()
        adapters.activate(unet, names, weights)
    else:
        unet.disable_adapters()
    return custom.components, unet if custom.compiled_unet is None else custom.compiled_unet, sample.method


def render_frames(base: BaseModels, custom: Customization | None, sample: SampleSpec, reporter: Reporter,
                  values: dict | None = None):
    """Denoise and decode one video -> ((F, H, W, 3) float frames in [0, 1], method used)."""
    values = values or resolve_sample(base, sample)
    components, unet, method = _pick_model(base, custom, sample)
    from engine.models import make_scheduler

    pipe = AnimateDiffPipeline(vae=components["vae"], text_encoder=components["text_encoder"],
                               tokenizer=components["tokenizer"], unet=unet, motion_adapter=None,
                               scheduler=make_scheduler(base, sample.scheduler))
    pipe.set_progress_bar_config(disable=True)
    steps = values["steps"]

    def on_step(_pipe, step, _timestep, kwargs):
        reporter.step("denoise", step + 1, steps)
        return kwargs

    with torch.inference_mode():
        out = pipe(sample.prompt, negative_prompt=sample.negative_prompt or None, num_frames=values["num_frames"],
                   height=values["height"], width=values["width"], num_inference_steps=steps,
                   guidance_scale=sample.guidance_scale, generator=torch.Generator("cpu").manual_seed(sample.seed),
                   output_type="np", callback_on_step_end=on_step)
    return out.frames[0], method


def generate(base: BaseModels, custom: Customization | None, sample: SampleSpec, out_dir: Path,
             progress=None, should_cancel=None, stem: str = "video") -> dict:
    """Sample one video and write it (mp4 or gif) with a PNG poster into `out_dir`.

    Returns:
        dict with ``video`` and ``poster`` paths, ``seed``, ``method``, size, ``fps``, ``format``, ``timings``.
    """
    reporter = Reporter(progress, should_cancel)
    values = resolve_sample(base, sample)
    reporter.check()
    t0 = time.perf_counter()
    frames, method = render_frames(base, custom, sample, reporter, values)
    t1 = time.perf_counter()
    reporter.step("export", 0, 1)
    video, poster = export.write_video(export.to_uint8(frames), Path(out_dir), stem, sample.format, sample.fps)
    reporter.step("export", 1, 1)
    return {"video": video, "poster": poster, "seed": sample.seed, "method": method, "scheduler": sample.scheduler,
            "motion_adapter_scale": sample.motion_adapter_scale, "fps": sample.fps,
            "format": sample.format, "num_frames": values["num_frames"], "height": values["height"],
            "width": values["width"], "steps": values["steps"],
            "timings": {"sample": round(t1 - t0, 4), "export": round(time.perf_counter() - t1, 4)}}
