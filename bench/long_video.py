"""Benchmark 8: long videos (FreeNoise, issue #15): peak memory and time per frame against the video's length.

Rows, each measured in its own process (so a row's memory peak is its own, not a heap an earlier row left):
  * ``shapes``: `engine.sampling.render_frames` end to end on the shapes preset's committed weights at its size
    (32x32): text encoder, `--steps` DDIM steps with classifier-free guidance, VAE decode; 16 frames is one plain
    pass (within the motion modules' 32 positions), 64 and 256 sample in FreeNoise windows
    (`engine.free_noise`: context_length 32 and the default stride, 24);
  * ``controlled``: the same under the shapes preset's canny ControlNet, its edges from a shapes-world video
    (the ControlNet's call runs on each window's frames, as the UNet does);
  * ``real-size``: one denoising step of the real-size architecture (SD 1.5 + AnimateDiff v1-5-2 from
    `engine/real_size.py`, random weights): one UNet forward on the CFG batch (2 x F frames at size/8), plainly
    for 16 frames and inside `free_noise` (windows of 16, AnimateDiff's training length, at the default stride,
    12) for 64 and 256. On a CPU the size is reduced (``--real-size``, 64 px by default; 512 is the real one:
    ``--device cuda --real-size 512``).

Memory: the CUDA allocator's peak on a GPU, else the process's RSS peak (5 ms samples); ``mem_delta_GiB`` is
the peak above the level after the models were loaded, i.e. what the video itself costs. Time: wall seconds and
the process's CPU seconds (all its threads; steadier than wall time on a CPU shared with other work). The reference is the
shortest (16-frame) row of the same kind: ``mem_x_first`` and ``time_per_frame_x_first`` are each row over it. The UNet
runs one window at a time, so its activations are a window's; the latents and the decoded frames hold every frame.

    PYTHONPATH=. .venv/bin/python -m bench.long_video                    # CPU: shapes 2 steps, real size 64 px
    PYTHONPATH=. .venv/bin/python -m bench.long_video --device cuda --dtype float16 --real-size 512 --steps 25
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from bench.harness import PeakMemory, quiet, report, sync

LENGTHS = (16, 64, 256)
KINDS = ("shapes", "controlled", "real-size")
MARK = "ROW "  # a row process prints its result on a line starting with this


def shapes_row(frames: int, steps: int, device: str, dtype: str, controlled: bool = False) -> dict:
    """`render_frames` of one `frames`-frame video on the shapes preset (base method), under its canny
    ControlNet when `controlled`."""
    import engine
    from common.presets import CONTROLNETS
    from engine import export
    from engine.progress import Reporter
    from engine.sampling import render_frames, resolve_sample
    from engine.shapes import world

    workdir = Path(tempfile.mkdtemp(prefix="bench-long-"))
    base = engine.load_base_models(engine.ModelSpec(preset="shapes", device=device, precision=dtype), workdir)
    control, controlnet = None, None
    if controlled:
        frames_in = world.video_sample(np.random.default_rng(0), direction="right").frames
        reference = export.write_video(frames_in, workdir, "reference", "gif", 8)[0]
        control = engine.ControlSpec(video=str(reference), type="canny", source_frames=world.NUM_FRAMES)
        controlnet = engine.load_controlnet(base, CONTROLNETS["shapes"]["canny"])
    spec = engine.SampleSpec(prompt="a red circle moving right", num_frames=frames, steps=steps, seed=0,
                             method="base", control=control)
    context = resolve_sample(base, spec)["context"]
    render_frames(base, None, engine.SampleSpec(prompt="a red circle", num_frames=8, steps=1, seed=0, method="base",
                                                control=control), Reporter(), controlnet=controlnet)  # warm-up
    stamps: list[float] = []
    reporter = Reporter(progress=lambda stage, *_: stamps.append(time.perf_counter()) if stage == "denoise" else None)
    with PeakMemory(base.device) as mem:
        sync(base.device)
        start, cpu = time.perf_counter(), time.process_time()
        video, _ = render_frames(base, None, spec, reporter, controlnet=controlnet)
        sync(base.device)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert video.shape[0] == frames
    steps_s = [b - a for a, b in zip([start, *stamps], stamps)]
    return {"kind": "controlled" if controlled else "shapes", "frames": frames, "size": base.defaults.height, "steps": steps,
            "free_noise": context is not None, **(context or {}), "seconds": seconds, "cpu_seconds": cpu,
            "seconds_per_frame": seconds / frames, "median_step_s": sorted(steps_s)[len(steps_s) // 2],
            "mem_peak_GiB": mem.peak_gib, "mem_delta_GiB": mem.delta_gib}


def real_size_row(frames: int, size: int, device: str, dtype: str, context_length: int = 16) -> dict:
    """One CFG UNet forward of the real-size AnimateDiff UNet on `frames` frames (FreeNoise past 16)."""
    from diffusers import AnimateDiffPipeline

    from bench.real_size import TEXT_DIM, TEXT_LEN, real_base
    from common.long_video import context_window
    from engine.free_noise import free_noise
    from engine.models import build_motion_unet

    dev, dt = torch.device(device), getattr(torch, dtype)
    base = real_base(dev, dt, False, Path(tempfile.mkdtemp(prefix="bench-long-real-")))
    unet = build_motion_unet(base, base.components["unet"])
    base.components["unet"] = None  # its weights live in the motion UNet now
    c = base.components
    pipe = AnimateDiffPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=unet,
                               motion_adapter=base.motion_adapter, scheduler=c["scheduler"])
    h = size // 8
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, frames, h, h, generator=gen).to(dev, dt)
    text = torch.randn(2 * frames, TEXT_LEN, TEXT_DIM, generator=gen).to(dev, dt)
    t = torch.tensor(500, device=dev)
    windowed = frames > context_length
    context_stride = context_window(context_length, frames, context_length, None, False)[1] if windowed else None

    def step():
        with torch.inference_mode():
            return unet(latents, t, encoder_hidden_states=text).sample

    with torch.inference_mode():
        unet(latents[:, :, :2], t, encoder_hidden_states=text[:4])  # warm-up at 2 frames
    with PeakMemory(dev) as mem, free_noise(pipe, context_length, context_stride) if windowed else nullcontext():
        sync(dev)
        start, cpu = time.perf_counter(), time.process_time()
        out = step()
        sync(dev)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert out.shape == latents.shape and torch.isfinite(out).all()
    return {"kind": "real-size", "frames": frames, "size": size, "steps": 1, "free_noise": windowed,
            **({"context_length": context_length, "context_stride": context_stride} if windowed else {}),
            "seconds": seconds, "cpu_seconds": cpu, "seconds_per_frame": seconds / frames,
            "mem_peak_GiB": mem.peak_gib, "mem_delta_GiB": mem.delta_gib}


def run_row(args, kind: str, frames: int) -> dict:
    """One row in a fresh process (this module with ``--row``)."""
    cmd = [sys.executable, "-m", "bench.long_video", "--row", kind, "--frames", str(frames), "--steps",
           str(args.steps), "--real-size", str(args.real_size), "--device", args.device, "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    lines = [line for line in out.stdout.splitlines() if line.startswith(MARK)]
    if out.returncode or not lines:
        raise RuntimeError(f"row {kind} x {frames} failed ({out.returncode}): {out.stderr[-2000:]}")
    row = json.loads(lines[-1][len(MARK):])
    print(f"[long-video] {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=0, help="shapes sampling steps; 0: 2 on CPU, 25 on CUDA")
    parser.add_argument("--real-size", type=int, default=0, help="real-size frame size; 0: 64 on CPU, 512 on CUDA")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--row", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.device = "cuda" if cuda else "cpu"
    args.dtype = args.dtype if args.dtype != "auto" else ("float16" if cuda else "float32")
    args.steps = args.steps or (25 if cuda else 2)
    args.real_size = args.real_size or (512 if cuda else 64)
    if args.row:
        row = real_size_row(args.frames, args.real_size, args.device, args.dtype) if args.row == "real-size" else \
            shapes_row(args.frames, args.steps, args.device, args.dtype, controlled=args.row == "controlled")
        print(MARK + json.dumps(row), flush=True)
        return
    rows = []
    for kind in args.kinds:
        kind_rows = [run_row(args, kind, frames) for frames in sorted(args.lengths)]
        first = kind_rows[0]
        for row in kind_rows:
            row["mem_x_first"] = row["mem_delta_GiB"] / first["mem_delta_GiB"] if first["mem_delta_GiB"] else None
            row["time_per_frame_x_first"] = row["seconds_per_frame"] / first["seconds_per_frame"]
            row["cpu_per_frame_x_first"] = row["cpu_seconds"] / row["frames"] / (first["cpu_seconds"] / first["frames"])
        rows += kind_rows
    reduced = args.real_size != 512 and "real-size" in args.kinds
    report("long_video", rows, {
        "config": {"device": args.device, "dtype": args.dtype, "shapes_steps": args.steps,
                   "real_size": args.real_size, "real_size_reduced": reduced, "lengths": sorted(args.lengths)},
        "reference": "the shortest row of each kind (one plain pass): mem_x_first and time_per_frame_x_first",
    }, device=args.device)


if __name__ == "__main__":
    main()
