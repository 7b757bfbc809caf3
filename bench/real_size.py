"""Benchmark 7: the real-size architecture (SD 1.5 + AnimateDiff v1-5-2 from `engine/real_size.py`, random
weights): seconds per denoising step and peak memory for sampling and for one training step.

What is timed, on `--device` in `--dtype`:
  * sampling step: one forward of the AnimateDiff UNet (`engine.models.build_motion_unet`) on the
    classifier-free-guidance batch (2 x F frames at size/8) — what the pipeline does once per step;
  * VAE decode (optional): the F frames of one video with VAE slicing (one frame at a time);
  * training step: `engine.training.train_adapter` on the same UNet with the Motion Adapter LoRA
    (rank 16, active, frozen) and the Spatial Adapter LoRA (rank 16, trained), batch 1 frozen video of F
    frames, AdamW, gradient checkpointing on (``--no-grad-ckpt`` to turn it off), autocast in half
    precision on CUDA (LoRA weights in fp32), per-step times from its progress callback;
  * optional ``--e2e-steps N``: `engine.sampling.render_frames` end to end (text encoder, N steps, decode).

The reference is the FLOP-bound lower limit of the same work: FLOPs counted with
`torch.utils.flop_counter.FlopCounterMode` on a meta-device copy of the same modules (no memory, no
compute; SDPA forced to the math backend so attention's two matmuls are counted: 4*B*H*Lq*Lk*d per
call), divided by the attainable dense rate measured in the same run: the larger of a square GEMM (8192^3 on
GPU, 2048^3 on CPU) and a 512-channel 3x3 convolution at 64x64, in the run's dtype. ratio = measured / lower limit (>= 1). ``--peak-tflops`` adds the nominal peak.

A CPU here cannot do 16 frames at 512x512 in minutes: on CPU the default is 2 frames (``--frames``),
1 warm-up + 2 measured steps; the FLOP count for the full 16-frame step is always reported too. On a GPU:
    python -m bench.real_size --device cuda --dtype float16 --e2e-steps 25
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.harness import PeakMemory, quiet, report, sync, timed
from engine import adapters, real_size
from engine.models import PRESET_DEFAULTS, BaseModels, build_motion_unet, compile_unet, make_training_scheduler
from engine.progress import Reporter
from engine.specs import ModelSpec
from engine.training import TrainData, train_adapter

TEXT_LEN, TEXT_DIM = 77, 768


# ---------------------------------------------------------------- shared by 7 and 7b (train_memory)
def meta_motion_unet(meta: dict, dtype: torch.dtype = torch.float32):
    """The real-size AnimateDiff UNet on the meta device (shapes only: no memory, no compute), from the
    meta-device modules of `real_size.build_sd15(meta=True)`."""
    from diffusers import UNetMotionModel

    with torch.device("meta"):
        return UNetMotionModel.from_unet2d(meta["unet"], meta["motion_adapter"]).to(dtype)


def attach_training_adapters(unet, rank: int) -> list[torch.nn.Parameter]:
    """The engine's training model: Motion Adapter LoRA (active, frozen) + Spatial Adapter LoRA (trained, fp32
    weights); returns the trained parameters."""
    adapters.add_adapter(unet, adapters.MOTION, adapters.motion_lora_config(rank), seed=1)
    adapters.add_adapter(unet, adapters.SPATIAL, adapters.spatial_lora_config(rank), seed=0)
    adapters.activate(unet, [adapters.MOTION, adapters.SPATIAL])
    return adapters.trainable_only(unet, adapters.SPATIAL)


# ---------------------------------------------------------------- FLOP counts (meta device, no memory)
def count_flops(frames: int, size: int, rank: int = 16) -> dict:
    """FLOPs of one CFG sampling step (UNet forward, batch 2), one VAE decode of `frames` frames and one
    training step (forward + backward, batch 1, LoRA on; + one forward recompute with checkpointing)."""
    meta = real_size.build_sd15(meta=True)
    unet = meta_motion_unet(meta)
    h = size // 8
    out = {}
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        unet(torch.empty(2, 4, frames, h, h, device="meta"), torch.tensor(500, device="meta"),
             encoder_hidden_states=torch.empty(2 * frames, TEXT_LEN, TEXT_DIM, device="meta"))
    out["sampling_step"] = fc.get_total_flops()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        meta["vae"].decode(torch.empty(1, 4, h, h, device="meta"))
    out["vae_decode"] = fc.get_total_flops() * frames
    unet.requires_grad_(False)
    attach_training_adapters(unet, rank)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        pred = unet(torch.empty(1, 4, frames, h, h, device="meta"), torch.tensor([500], device="meta"),
                    encoder_hidden_states=torch.empty(frames, TEXT_LEN, TEXT_DIM, device="meta")).sample
        forward = fc.get_total_flops()
        pred.float().pow(2).mean().backward()
    out["train_forward"] = forward
    out["train_step_no_ckpt"] = fc.get_total_flops()
    out["train_step_ckpt"] = out["train_step_no_ckpt"] + forward  # checkpointing recomputes the forward once
    return out


def dense_rate(device: torch.device, dtype: torch.dtype) -> dict:
    """FLOP/s measured here for a large GEMM and a large 3x3 convolution in `dtype`; the larger is the
    attainable compute roof used for the lower limit (on CPU oneDNN's convolutions beat its GEMM)."""
    gpu = device.type == "cuda"
    n = 8192 if gpu else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    conv = torch.nn.Conv2d(512, 512, 3, padding=1).to(device, dtype).eval()
    x = torch.randn(8 if gpu else 1, 512, 64, 64, device=device, dtype=dtype)
    reps = 20 if gpu else 5
    rates = {}
    with torch.inference_mode():
        for name, fn, work in (("gemm", lambda: a @ b, 2 * n**3),
                               ("conv3x3", lambda: conv(x), 2 * x.shape[0] * 512 * 512 * 9 * 64 * 64)):
            for _ in range(3):
                fn()
            seconds, _ = timed(lambda fn=fn: [fn() for _ in range(reps)], device)
            rates[name] = work * reps / seconds
    rates["roof"] = max(rates["gemm"], rates["conv3x3"])
    return rates


# ---------------------------------------------------------------- the real-size models
def real_base(device: torch.device, dtype: torch.dtype, grad_ckpt: bool, workdir: Path) -> BaseModels:
    """A `BaseModels` holding the random-weight real-size modules, so the engine's own code paths run."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer

    from engine.tiny_models import write_tiny_tokenizer

    modules = real_size.build_sd15(device=str(device), dtype=dtype)
    components = {
        "unet": modules["unet"].eval().requires_grad_(False), "vae": modules["vae"].eval().requires_grad_(False),
        "text_encoder": modules["text_encoder"].eval().requires_grad_(False),
        # no CLIP vocabulary offline: a byte-level one (ids < 49408 fit the real embedding table)
        "tokenizer": CLIPTokenizer.from_pretrained(write_tiny_tokenizer(workdir / "tokenizer")),
        "scheduler": DDIMScheduler.from_config(real_size.load_config("scheduler")),
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
    }
    components["vae"].enable_slicing()
    precision = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[dtype]
    spec = ModelSpec(preset="sd15", device=str(device), precision=precision, gradient_checkpointing=grad_ckpt)
    motion = modules["motion_adapter"].eval().requires_grad_(False)
    return BaseModels(spec, device, dtype, components, motion, workdir, PRESET_DEFAULTS["sd15"], workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=0, help="0: 16 on CUDA, 2 on CPU (reduced, says so)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=0, help="measured steps; 0: 2 on CPU, 5 on CUDA")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-sample", action="store_true")
    parser.add_argument("--no-decode", action="store_true")
    parser.add_argument("--no-grad-ckpt", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet for sampling")
    parser.add_argument("--e2e-steps", type=int, default=0, help="also run render_frames with N steps")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="nominal dense peak, for a second bound")
    parser.add_argument("--name", default="real_size", help="results file name")
    args = parser.parse_args()
    quiet()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = getattr(torch, args.dtype) if args.dtype != "auto" else (
        torch.float16 if device.type == "cuda" else torch.float32)
    frames = args.frames or (16 if device.type == "cuda" else 2)
    repeats = args.repeats or (5 if device.type == "cuda" else 2)
    reduced = frames != 16 or args.size != 512
    if reduced:
        print(f"NOTE: reduced workload: {frames} frames at {args.size}x{args.size} (the real one is 16 at 512x512)")
    h = args.size // 8
    torch.manual_seed(0)

    t0 = time.perf_counter()
    flops = count_flops(frames, args.size, args.rank)
    flops_full = flops if not reduced else count_flops(16, 512, args.rank)
    print(f"FLOP count ({time.perf_counter() - t0:.1f} s): sampling step {flops['sampling_step'] / 1e12:.2f} TFLOP "
          f"at {frames} frames; {flops_full['sampling_step'] / 1e12:.2f} TFLOP at 16x512x512", flush=True)
    rates = dense_rate(device, dtype)
    rate = rates["roof"]
    print(f"dense rates here ({dtype}): GEMM {rates['gemm'] / 1e12:.3f}, conv3x3 {rates['conv3x3'] / 1e12:.3f} "
          "TFLOP/s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-real-size-"))
    t_build, base = timed(lambda: real_base(device, dtype, not args.no_grad_ckpt, work), device)
    unet = build_motion_unet(base, base.components["unet"])
    base._motion_unet_cache["base"] = unet
    base.components["unet"] = None  # the 2D UNet's weights now live in the motion UNet; free the copy
    gc.collect()
    processors = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    print(f"built real-size models in {t_build:.1f} s; UNetMotionModel "
          f"{sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M parameters; attention: {processors}", flush=True)

    rows, extra = [], {}

    def bound_row(what: str, seconds: float, work_flops: float, mem: PeakMemory, n: int) -> dict:
        lower = work_flops / rate
        row = {"what": what, "seconds": seconds, "TFLOP": work_flops / 1e12, "lower_limit_s": lower,
               "ratio_to_limit": seconds / lower, "achieved_TFLOPs": work_flops / seconds / 1e12,
               "peak_mem_GiB": mem.peak_gib, "phase_mem_GiB": mem.delta_gib, "n": n}
        if args.peak_tflops:
            row["ratio_to_nominal_peak"] = seconds / (work_flops / (args.peak_tflops * 1e12))
        return row

    if not args.no_sample:
        forward_unet = unet
        if args.compile:
            forward_unet = compile_unet(unet)  # what ModelSpec(compile_unet=True) samples with
        latents = torch.randn(2, 4, frames, h, h, device=device, dtype=dtype)
        text = torch.randn(2 * frames, TEXT_LEN, TEXT_DIM, device=device, dtype=dtype)
        t = torch.tensor(500, device=device)

        def step():
            with torch.inference_mode():
                return forward_unet(latents, t, encoder_hidden_states=text).sample

        with PeakMemory(device) as mem:
            for _ in range(args.warmup):
                step()
            times = [timed(step, device)[0] for _ in range(repeats)]
            print(f"sampling step times: {[round(x, 3) for x in times]}", flush=True)
        rows.append(bound_row(f"sampling step (CFG, 2x{frames} frames)", statistics.median(times),
                              flops["sampling_step"], mem, repeats))
        extra["sampling_step_times"] = times
        del latents, text

    if not args.no_decode:
        vae = base.components["vae"]
        z = torch.randn(frames, 4, h, h, device=device, dtype=dtype)

        def decode():
            with torch.inference_mode():
                return vae.decode(z / vae.config.scaling_factor).sample

        with PeakMemory(device) as mem:
            if device.type == "cuda":
                decode()
            seconds = timed(decode, device)[0]
        rows.append(bound_row(f"VAE decode, {frames} frames (sliced)", seconds, flops["vae_decode"], mem, 1))
        print(f"VAE decode: {seconds:.2f} s", flush=True)

    if args.e2e_steps:
        from engine.sampling import render_frames
        from engine.specs import SampleSpec

        sample = SampleSpec(prompt="a photo of a dog running", num_frames=frames, height=args.size,
                            width=args.size, steps=args.e2e_steps, seed=0, method="base")
        stamps = []
        reporter = Reporter(progress=lambda stage, *_: stamps.append(time.perf_counter()) if stage == "denoise"
                            else None)
        with PeakMemory(device) as mem:
            total, _ = timed(lambda: render_frames(base, None, sample, reporter), device)
        per_step = statistics.median(b - a for a, b in zip(stamps, stamps[1:])) if len(stamps) > 1 else float("nan")
        row = bound_row(f"render_frames e2e, {args.e2e_steps} steps", total,
                        flops["sampling_step"] * args.e2e_steps + flops["vae_decode"], mem, 1)
        row["median_step_s"] = per_step
        rows.append(row)

    if not args.no_train:
        attach_training_adapters(unet, args.rank)
        data = TrainData(latents=torch.randn(1, 4, frames, h, h), embeddings=torch.randn(1, TEXT_LEN, TEXT_DIM))
        stamps = []
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            train_adapter(unet, adapters.SPATIAL, data, make_training_scheduler(base), args.warmup + repeats, 1e-4, 1,
                          0, Reporter(progress=lambda *a: (sync(device), stamps.append(time.perf_counter()))),
                          stage="train")
        times = [b - a for a, b in zip([start] + stamps[:-1], stamps)][args.warmup:]
        print(f"training step times: {[round(x, 3) for x in times]}", flush=True)
        work_flops = flops["train_step_no_ckpt" if args.no_grad_ckpt else "train_step_ckpt"]
        rows.append(bound_row(f"training step (batch 1 x {frames} frames"
                              f"{', grad ckpt' if not args.no_grad_ckpt else ''})",
                              statistics.median(times), work_flops, mem, len(times)))
        extra["training_step_times"] = times

    report(args.name, rows, {
        "config": {"frames": frames, "size": args.size, "device": str(device), "dtype": str(dtype),
                   "reduced_workload": reduced, "warmup": args.warmup, "repeats": repeats, "rank": args.rank,
                   "gradient_checkpointing": not args.no_grad_ckpt, "compile": args.compile,
                   "vae_slicing": True, "attention_processors": processors},
        "build_seconds": t_build,
        "flops": flops, "flops_16x512": flops_full, "dense_flops_per_s": rates,
        "flop_method": "torch.utils.flop_counter.FlopCounterMode on meta-device modules built from "
                       "engine/configs/sd15, SDPA forced to the math backend (attention = 2 matmuls: "
                       "4*B*H*Lq*Lk*d FLOPs); matmul/conv/bmm counted as 2*MACs; norms, activations "
                       "and elementwise ops not counted. Training = forward + backward (+1 forward "
                       "recompute with gradient checkpointing).",
        **extra,
    }, device=device)


if __name__ == "__main__":
    main()
