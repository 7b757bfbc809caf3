"""Video sampling with AnimateDiff: base, naive injection, or Still-Moving (spatial adapters on); text-to-video,
under a ControlNet, video-to-video, or both (the four AnimateDiff pipelines of diffusers over one UNet)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AnimateDiffControlNetPipeline,
    AnimateDiffPipeline,
    AnimateDiffVideoToVideoControlNetPipeline,
    AnimateDiffVideoToVideoPipeline,
)
from PIL import Image

from common.video_to_video import init_problem
from engine import adapters, annotators, conditioning, export, motion_loras
from engine.artifact import Customization
from engine.errors import SpecError
from engine.free_noise import free_noise, resolve_context
from engine.models import BaseModels, make_scheduler
from engine.progress import Reporter
from engine.specs import SampleSpec


def resolve_sample(base: BaseModels, sample: SampleSpec) -> dict:
    """The spec's size/frames/steps with the preset's defaults filled in, validated; ``context``: the FreeNoise
    windows of a video longer than the motion modules' context or with a prompt map (else None)."""
    values: dict = base.defaults.fill(num_frames=sample.num_frames, height=sample.height, width=sample.width,
                                      steps=sample.steps, guidance_scale=sample.guidance_scale)
    if values["num_frames"] < 1:
        raise SpecError(f"num_frames={values['num_frames']} must be at least 1", field="num_frames")
    values["context"] = resolve_context(base.motion_adapter.config.motion_max_seq_length, values["num_frames"],
                                        sample.prompt, sample.context_length, sample.context_stride)
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
    control, init = sample.control, sample.init
    if control is not None and control.type not in ("canny", *annotators.LOADERS, "precomputed"):
        raise SpecError(f"control.type={control.type!r}; expected canny, {', '.join(annotators.LOADERS)} or "
                        "precomputed", field="control.type")
    if control is not None and not 0 <= control.start < control.end <= 1:
        raise SpecError(f"control start={control.start}, end={control.end}: need 0 <= start < end <= 1",
                        field="control.start")
    problem = None if init is None else init_problem(values["steps"], init.strength, sample.scheduler)
    if problem is not None:
        raise SpecError(problem, field="init.strength")
    return values


def _pick_model(base: BaseModels, custom: Customization | None, sample: SampleSpec,
                motion_lora: motion_loras.MotionLora | None = None):
    """Return (components, the UNet to call, method used) and set the adapters for the requested method:
    Still-Moving's Spatial Adapters (off for naive injection) and, at a non-zero `motion_adapter_scale`,
    the Motion Adapter (1 = the static videos it was trained for, negative = more motion than the base);
    a `motion_lora` at `sample.motion_lora_scale` beside them (every call sets them all: none left from before).

    The UNet to call is the `torch.compile`d one when the base's spec asks for it (`ModelSpec.compile_unet`;
    not the base's copy that motion LoRAs attach to).
    """
    if custom is None or sample.method == "base":
        if motion_lora is None:
            return base.components, base.sampling_forward(), "base"
        unet = motion_loras.lora_unet(base)
        adapters.activate(unet, [motion_loras.attach(base.components, unet, motion_lora)], [sample.motion_lora_scale])
        return base.components, unet, "base"
    unet = custom.unet
    names = [] if sample.method == "naive" else [adapters.SPATIAL]
    weights = [sample.spatial_adapter_scale] * len(names)
    if sample.motion_adapter_scale:
        if adapters.MOTION not in getattr(unet, "peft_config", {}):
            raise SpecError("motion_adapter_scale: this customization has no Motion Adapter loaded (trained "
                            "without one, or its file was not given)", field="motion_adapter_scale")
        names, weights = names + [adapters.MOTION], weights + [sample.motion_adapter_scale]
    if motion_lora is not None:
        names = names + [motion_loras.attach(custom.components, unet, motion_lora)]
        weights = weights + [sample.motion_lora_scale]
    if names:
        unet.enable_adapters()
        adapters.activate(unet, names, weights)
    else:
        unet.disable_adapters()
    return custom.components, unet if custom.compiled_unet is None else custom.compiled_unet, sample.method


PIPELINES = {  # (with a ControlNet, with an init video) -> the diffusers pipeline
    (False, False): AnimateDiffPipeline,
    (True, False): AnimateDiffControlNetPipeline,
    (False, True): AnimateDiffVideoToVideoPipeline,
    (True, True): AnimateDiffVideoToVideoControlNetPipeline,
}


def reference_frames(sample: SampleSpec, values: dict, annotator=None) -> dict:
    """The control's conditioning frames and the init video, resampled to the video's frames and size:
    ``{"control": (F, H, W, 3) uint8, "init": ...}`` for those the spec has (canny: the edges of the reference;
    depth, openpose: `annotator`'s maps of it, `engine.load_annotator`)."""
    out, size = {}, (values["num_frames"], values["height"], values["width"])
    if sample.control is not None:
        control = sample.control
        frames = conditioning.read_reference(control.video, *size, total=control.source_frames)
        if control.type == "canny":
            out["control"] = conditioning.canny(frames, control.low_threshold, control.high_threshold)
        elif control.type == "precomputed":
            out["control"] = frames
        elif annotator is None:
            raise SpecError(f"control.type={control.type!r} needs its annotator (engine.load_annotator)",
                            field="control.type")
        else:
            out["control"] = annotator(frames)
    if sample.init is not None:
        out["init"] = conditioning.read_reference(sample.init.video, *size, total=sample.init.source_frames)
    return out


def _images(frames: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(frame) for frame in frames]


def render_frames(base: BaseModels, custom: Customization | None, sample: SampleSpec, reporter: Reporter,
                  values: dict | None = None, controlnet=None, references: dict | None = None, annotator=None,
                  motion_lora: motion_loras.MotionLora | None = None):
    """Denoise and decode one video -> ((F, H, W, 3) float frames in [0, 1], method used).

    One path for all four pipelines (`PIPELINES`): the same UNet (with the method's adapters), scheduler and
    seeded generator; a control adds `controlnet` and its conditioning frames, an init its video and strength.
    `references`: `reference_frames` of the spec, when the caller already read them (else read here, with
    `annotator` for an annotated control type); `motion_lora`: the spec's motion LoRA, when the caller
    already read it (`engine.read_motion_lora`)."""
    values = values or resolve_sample(base, sample)
    if sample.control is not None and controlnet is None:
        raise SpecError("control needs a ControlNet (engine.load_controlnet)", field="control")
    references = reference_frames(sample, values, annotator) if references is None else references
    motion_lora = motion_loras.for_sample(base, sample, motion_lora)
    components, unet, method = _pick_model(base, custom, sample, motion_lora)

    context = values["context"]  # FreeNoise reads the motion modules' positions from the pipeline's adapter
    modules = dict(vae=components["vae"], text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
                   unet=unet, motion_adapter=base.motion_adapter if context else None,
                   scheduler=make_scheduler(base, sample.scheduler, values["steps"]))
    kwargs = dict(negative_prompt=sample.negative_prompt or None, height=values["height"], width=values["width"],
                  num_inference_steps=values["steps"], guidance_scale=values["guidance_scale"],
                  generator=torch.Generator("cpu").manual_seed(sample.seed), output_type="np")
    if sample.control is not None:
        modules["controlnet"] = controlnet
        kwargs.update(conditioning_frames=_images(references["control"]),
                      controlnet_conditioning_scale=sample.control.scale,
                      control_guidance_start=sample.control.start, control_guidance_end=sample.control.end)
    if sample.init is not None:
        kwargs.update(video=_images(references["init"]), strength=sample.init.strength)
    else:
        kwargs["num_frames"] = values["num_frames"]
    pipe = PIPELINES[sample.control is not None, sample.init is not None](**modules)
    pipe.set_progress_bar_config(disable=True)

    def on_step(_pipe, step, _timestep, callback_kwargs):
        reporter.step("denoise", step + 1, _pipe.num_timesteps)  # fewer than `steps` video-to-video
        return callback_kwargs

    with torch.inference_mode(), free_noise(pipe, **context) if context else nullcontext():
        out = pipe(prompt=sample.prompt, callback_on_step_end=on_step, **kwargs)
    return out.frames[0], method


def generate(base: BaseModels, custom: Customization | None, sample: SampleSpec, out_dir: Path,
             progress=None, should_cancel=None, stem: str = "video", controlnet=None, should_suspend=None,
             annotator=None, motion_lora: motion_loras.MotionLora | None = None) -> dict:
    """Sample one video and write it (mp4 or gif) with a PNG poster into `out_dir`; with a control, the
    conditioning frames used too (``control.<format>``, the same size and frames as the video).

    Args:
        controlnet: the loaded ControlNet a `sample.control` needs (`engine.load_controlnet`).
        annotator: the loaded annotator a depth or openpose control needs (`engine.load_annotator`).
        motion_lora: the loaded `sample.motion_lora` (`engine.read_motion_lora`; read here when not given).
        should_cancel, should_suspend: polled between steps (`CancelledError`, `SuspendedError`).

    Returns:
        dict with ``video`` and ``poster`` paths (and ``control`` with a control), ``seed``, ``method``, size,
        ``fps``, ``format``, ``timings``.
    """
    reporter = Reporter(progress, should_cancel, should_suspend=should_suspend)
    values = resolve_sample(base, sample)
    reporter.check()
    t0 = time.perf_counter()
    references = reference_frames(sample, values, annotator)
    frames, method = render_frames(base, custom, sample, reporter, values, controlnet, references, motion_lora)
    t1 = time.perf_counter()
    reporter.step("export", 0, 1)
    video, poster = export.write_video(export.to_uint8(frames), Path(out_dir), stem, sample.format, sample.fps)
    extra = {}
    if "control" in references:
        extra["control"] = export.write_video(references["control"], Path(out_dir), "control", sample.format,
                                              sample.fps)[0]
    reporter.step("export", 1, 1)
    return {"video": video, "poster": poster, **extra, "seed": sample.seed, "method": method,
            "scheduler": sample.scheduler,
            "motion_adapter_scale": sample.motion_adapter_scale, "fps": sample.fps,
            **({"motion_lora": sample.motion_lora, "motion_lora_scale": sample.motion_lora_scale}
               if sample.motion_lora else {}),
            "format": sample.format, "num_frames": values["num_frames"], "height": values["height"],
            "width": values["width"], "steps": values["steps"], "guidance_scale": values["guidance_scale"],
            **(values["context"] or {}),
            "timings": {"sample": round(t1 - t0, 4), "export": round(time.perf_counter() - t1, 4)}}
