"""Benchmark 1: our sampling against a plain diffusers `AnimateDiffPipeline` call.

Same weights (the very same modules), scheduler, steps, frames and seed; outputs asserted bit-equal.
Rows, each "ours / plain" in the same run, interleaved, median of `--repeats` after warm-up:
  * base:          `render_frames(method="base")`      vs the pipeline on the base AnimateDiff UNet;
  * still-moving:  `render_frames(custom)` (spatial LoRA active through peft, unfused)
                   vs the pipeline on that same UNet;
  * generate:      `engine.generate` (sampling + mp4 + poster) vs the pipeline + the same mp4/poster writer.
An extra row, informative only: the plain pipeline with the spatial LoRA *fused* into a copy of the
UNet (what a hand-written diffusers script would do); its output is close, not bit-equal.
Target (issue 5): ours / plain <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import AnimateDiffPipeline

import engine
from bench.harness import interleaved, quiet, report
from bench.tiny import add_video_size_args, quick_customization, tiny_base, tiny_checkpoint
from engine import adapters, export
from engine.models import make_scheduler
from engine.progress import Reporter
from engine.sampling import render_frames

TARGET = 1.05


def plain_pipeline(components: dict, unet, scheduler) -> AnimateDiffPipeline:
    pipe = AnimateDiffPipeline(vae=components["vae"], text_encoder=components["text_encoder"],
                               tokenizer=components["tokenizer"], unet=unet, motion_adapter=None,
                               scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_size_args(parser, steps=True)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    quiet()
    work = Path(tempfile.mkdtemp(prefix="bench-sampling-"))
    base = tiny_base(work)
    d = base.defaults
    frames, size, steps = d.fill(num_frames=args.frames, height=args.size, steps=args.steps).values()
    checkpoint = tiny_checkpoint(work)
    custom = engine.load_customization(base, quick_customization(base, work, checkpoint), checkpoint)
    prompt, seed = "a photo of sks dog running", 7

    def spec(method: str) -> engine.SampleSpec:
        return engine.SampleSpec(prompt=prompt, num_frames=frames, height=size, width=size, steps=steps, seed=seed,
                                 method=method)

    base_pipe = plain_pipeline(base.components, base.sampling_motion_unet(), make_scheduler(base, "ddim"))
    custom_pipe = plain_pipeline(custom.components, custom.unet, make_scheduler(base, "ddim"))
    fused_unet = copy.deepcopy(custom.unet)
    adapters.activate(fused_unet, [adapters.SPATIAL], [1.0])
    fused_unet.fuse_lora(adapter_names=[adapters.SPATIAL])
    fused_pipe = plain_pipeline(custom.components, fused_unet, make_scheduler(base, "ddim"))

    def plain(pipe, prepare=None):
        def call():
            if prepare:
                prepare()
            with torch.inference_mode():
                return pipe(prompt, num_frames=frames, height=size, width=size, num_inference_steps=steps,
                            guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(seed),
                            output_type="np").frames[0]
        return call

    def custom_on():  # the spatial adapter at scale 1, as render_frames sets it
        custom.unet.enable_adapters()
        adapters.activate(custom.unet, [adapters.SPATIAL], [1.0])

    quiet_reporter = Reporter(progress=lambda *a: None)
    ours_base = lambda: render_frames(base, None, spec("base"), quiet_reporter)[0]  # noqa: E731
    ours_custom = lambda: render_frames(base, custom, spec("still-moving"), quiet_reporter)[0]  # noqa: E731
    plain_base, plain_custom = plain(base_pipe), plain(custom_pipe, custom_on)
    plain_fused = plain(fused_pipe)
    out_dir = work / "videos"

    def ours_generate():
        return engine.generate(base, custom, spec("still-moving"), out_dir, stem="ours")

    def plain_generate():
        frames_ = plain_custom()
        return export.write_video(export.to_uint8(frames_), out_dir, "plain", "mp4", 8)

    checks = {
        "base": bool(np.array_equal(ours_base(), plain_base())),
        "still-moving": bool(np.array_equal(ours_custom(), plain_custom())),
    }
    fused_diff = float(np.abs(ours_custom() - plain_fused()).max())
    assert all(checks.values()), f"our sampling and the plain pipeline disagree: {checks}"
    timing = interleaved({"ours_base": ours_base, "plain_base": plain_base, "ours_custom": ours_custom,
                          "plain_custom": plain_custom, "plain_fused": plain_fused, "ours_generate": ours_generate,
                          "plain_generate": plain_generate}, args.repeats, args.warmup)
    t = {k: v["median"] for k, v in timing.items()}
    rows = [
        {"case": "base", "ours_s": t["ours_base"], "plain_s": t["plain_base"],
         "ratio": t["ours_base"] / t["plain_base"], "outputs_equal": checks["base"]},
        {"case": "still-moving (peft LoRA)", "ours_s": t["ours_custom"], "plain_s": t["plain_custom"],
         "ratio": t["ours_custom"] / t["plain_custom"], "outputs_equal": checks["still-moving"]},
        {"case": "generate incl. mp4", "ours_s": t["ours_generate"], "plain_s": t["plain_generate"],
         "ratio": t["ours_generate"] / t["plain_generate"], "outputs_equal": "-"},
        {"case": "info: vs plain, LoRA fused", "ours_s": t["ours_custom"], "plain_s": t["plain_fused"],
         "ratio": t["ours_custom"] / t["plain_fused"], "outputs_equal": f"max|diff|={fused_diff:.1e}"},
    ]
    headline = [r["ratio"] for r in rows[:3]]
    report("sampling", rows, {
        "config": {"preset": "tiny", "frames": frames, "size": size, "steps": steps, "scheduler": "ddim",
                   "guidance_scale": 7.5, "repeats": args.repeats, "warmup": args.warmup},
        "outputs_equal": checks, "fused_max_abs_diff": fused_diff, "timings": timing,
        "target": f"ours/plain <= {TARGET} (base, still-moving, generate)", "met": max(headline) <= TARGET,
    })


if __name__ == "__main__":
    main()
