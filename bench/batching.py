"""Batching (issue #12): stills per T2I pipeline call (`TrainSpec.image_batch_size`, `STILLMOVING_IMAGE_BATCH_SIZE`)
and frozen videos per Motion Adapter training step (`MotionAdapterSpec.batch_size`, `STILLMOVING_MOTION_BATCH_SIZE`),
at the tiny and the real-size architecture (SD 1.5 + AnimateDiff v1-5-2 configs, random weights, `bench.real_size`).

Per batch size: seconds per still (`frozen_videos.sample_stills`, the same images at every batch size: each has its
own generator) and seconds per frozen video in Motion Adapter training (`motion_adapter.train_motion_lora`, one warm-up
step then timed steps), with the peak memory of each phase (RSS on CPU, allocated on CUDA). The speed-up is
batch 1's time per item over batch B's. On CPU the real-size rows run at a reduced size and few steps (``--real-size``,
``--real-frames``); on a GPU run them at 512 and 16 frames:
    python -m bench.batching --device cuda --dtype float16 --real-size 512 --real-frames 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import PeakMemory, quiet, report, sync
from bench.real_size import real_base
from bench.tiny import PROMPTS, tiny_base
from engine import frozen_videos
from engine.motion_adapter import train_motion_lora
from engine.progress import Reporter
from engine.specs import MotionAdapterSpec
from engine.training import TrainData


def stills_row(base, arch: str, batch: int, images: int, size: int, steps: int) -> dict:
    with PeakMemory(base.device) as mem:
        start = time.perf_counter()
        frozen_videos.sample_stills(base.components, PROMPTS, images, 0, size, size, steps, 7.5, "", Reporter(),
                                    batch_size=batch)
        sync(base.device)
        seconds = time.perf_counter() - start
    return {"arch": arch, "what": "stills", "batch": batch, "size": size, "steps": steps, "items": images,
            "s_per_item": seconds / images, "peak_mem_GiB": mem.peak_gib, "phase_mem_GiB": mem.delta_gib}


def motion_row(base, arch: str, batch: int, frames: int, size: int, steps: int) -> dict:
    h = size // 8
    gen = torch.Generator().manual_seed(0)
    embeds = frozen_videos.encode_prompts(base.components, list(PROMPTS) * batch)
    data = TrainData(latents=torch.randn(len(embeds), 4, frames, h, h, generator=gen).to(base.device, base.dtype),
                     embeddings=embeds)
    times: list[float] = []
    last = [time.perf_counter()]

    def progress(_stage, step, _total):
        sync(base.device)
        now = time.perf_counter()
        if step > 1:  # the first step sets up the optimizer: not timed
            times.append(now - last[0])
        last[0] = now

    unet = base.base_motion_unet()
    with PeakMemory(base.device) as mem:
        last[0] = time.perf_counter()
        train_motion_lora(base, unet, data, MotionAdapterSpec(batch_size=batch, train_steps=steps + 1),
                          Reporter(progress))
    per_step = sorted(times)[len(times) // 2]
    return {"arch": arch, "what": "motion adapter step", "batch": batch, "size": size, "frames": frames,
            "steps": steps, "s_per_step": per_step, "s_per_item": per_step / batch, "peak_mem_GiB": mem.peak_gib,
            "phase_mem_GiB": mem.delta_gib}


def speedups(rows: list[dict]) -> None:
    for row in rows:
        ref = next(r for r in rows if r["arch"] == row["arch"] and r["what"] == row["what"] and r["batch"] == 1)
        row["speedup_vs_batch_1"] = ref["s_per_item"] / row["s_per_item"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--tiny-steps", type=int, default=4)
    parser.add_argument("--real-size", type=int, default=128, help="real-size architecture at this resolution")
    parser.add_argument("--real-frames", type=int, default=4)
    parser.add_argument("--real-steps", type=int, default=2, help="denoising steps per still, training steps")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args(argv)
    quiet()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = tiny_base(Path(tmp))
        for batch in args.batches:
            rows.append(stills_row(tiny, "tiny", batch, 2 * max(args.batches), 32, args.tiny_steps))
            rows.append(motion_row(tiny, "tiny", batch, 8, 32, 3 * args.tiny_steps))
        if not args.skip_real:
            dtype = getattr(torch, args.dtype)
            real = real_base(torch.device(args.device), dtype, grad_ckpt=True, workdir=Path(tmp) / "real")
            for batch in args.batches:
                rows.append(stills_row(real, "sd15", batch, max(args.batches), args.real_size, args.real_steps))
                rows.append(motion_row(real, "sd15", batch, args.real_frames, args.real_size, args.real_steps))
    speedups(rows)
    report("batching", rows, {"args": vars(args)}, device=args.device)


if __name__ == "__main__":
    main()
