"""`python -m engine.shapes.train_motion_lora`: the shapes world's motion LoRA, in the hub layout of AnimateDiff's
camera-motion LoRAs (``guoyww/animatediff-motion-lora-*``; `engine.motion_loras`), and what it does to motion.

AnimateDiff's recipe at toy size: a LoRA on the motion modules' attention projections of the world's T2V (its
T2I and motion adapter frozen), trained on generator videos of one motion (every object moving right) under
captions that do not name it ("a red square"; 10% empty), as a camera LoRA's captions describe the content and
not the camera. Saved to ``models/shapes/motion-lora-right/``; `evaluate` samples the same prompts and seeds with
and without it and lets the judge's centroid track say which way each video moves (`docs/motion-lora.json`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import engine
from engine import adapters, motion_loras
from engine.progress import Reporter
from engine.sampling import render_frames
from engine.shapes import data, loop, world
from engine.shapes import judge as judge_mod
from engine.shapes.paths import JUDGE_DIR, ROOT
from engine.shapes.train_unet import CAPTION_DROPOUT, embed, encode_latents
from engine.specs import SampleSpec

DIRECTION = "right"
OUT_DIR = ROOT / f"motion-lora-{DIRECTION}"
DOCS = Path(__file__).resolve().parents[2] / "docs"
NAME = "motion_lora"
RANK = 8


def training_set(base: engine.BaseModels, num_videos: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Latents (N, 4, F, h, w) of generator videos all moving `DIRECTION`, and their captions without a motion
    phrase (`CAPTION_DROPOUT` of them empty)."""
    rng = np.random.default_rng(seed)
    samples = [world.video_sample(rng, direction=DIRECTION) for _ in range(num_videos)]
    videos = data.to_tensor(np.stack([s.frames for s in samples]))
    n, f = videos.shape[:2]
    latents = encode_latents(base.components["vae"], videos.flatten(0, 1)).unflatten(0, (n, f)).transpose(1, 2)
    drop = rng.random(n) < CAPTION_DROPOUT
    captions = ["" if d else world.image_caption(s.scene.shape, s.scene.colour) for s, d in zip(samples, drop)]
    return latents.contiguous(), captions


def train(base: engine.BaseModels, steps: int = 600, batch: int = 4, lr: float = 1e-2, rank: int = RANK,
          num_videos: int = 256, seed: int = 11, t_min: int = 400) -> tuple[dict[str, torch.Tensor], dict]:
    """Train the LoRA on a private copy of the base T2V; return its peft tensors and the training record."""
    torch.manual_seed(seed)
    latents, captions = training_set(base, num_videos, seed)
    table, rows = embed(base.components["text_encoder"], base.components["tokenizer"], captions)
    unet = base.base_motion_unet()
    adapters.add_adapter(unet, NAME, adapters.motion_lora_config(rank), seed=seed)
    params = adapters.trainable_only(unet, NAME)
    opt, sched = loop.optimizer(params, lr, steps, warmup=min(20, steps))
    noise_scheduler = engine.models.make_training_scheduler(base)
    log = loop.Log(NAME, steps, every=50)
    gen = torch.Generator().manual_seed(seed)
    f = latents.shape[2]
    unet.train()
    for step in range(steps):
        loss = loop.epsilon_loss(unet, latents, lambda idx: table[rows[idx]].repeat_interleave(f, dim=0),
                               noise_scheduler, batch, gen, t_min)
        loop.update(opt, sched, loss, clip=params)
        log(step, float(loss.detach()))
    unet.eval()
    record = {"direction": DIRECTION, "steps": steps, "batch": batch, "lr": lr, "rank": rank, "seed": seed,
              "timesteps": [t_min, noise_scheduler.config.num_train_timesteps],
              "num_videos": num_videos, "captions": "a {colour} {shape} (no motion phrase), 10% empty",
              "parameters": sum(p.numel() for p in params), "seconds": log.seconds, "loss_curve": log.curve}
    return adapters.adapter_state(unet, NAME), record


def evaluate(base: engine.BaseModels, lora_dir: Path, num_videos: int = 40, steps: int = 25,
             scales: tuple[float | None, ...] = (None, 1.0), seed: int = 3000) -> dict:
    """Per LoRA scale (None: without it), over the same prompts and seeds: the share of videos the judge's
    centroid track reads as moving `DIRECTION` (`judge.moves_as_named`) and the mean horizontal displacement.

    Prompts: the world's object captions without a motion phrase, half of them with a phrase naming another
    direction (the LoRA against the text)."""
    judge = judge_mod.Judge.load(JUDGE_DIR)
    rng = np.random.default_rng(seed)
    others = [d for d in world.DIRECTIONS if d != DIRECTION]
    prompts = []
    for i in range(num_videos):
        scene = world.random_scene(rng)
        caption = world.image_caption(scene.shape, scene.colour)
        prompts.append(caption if i % 2 == 0 else f"{caption} {world.motion_phrase(others[(i // 2) % len(others)])}")
    lora = motion_loras.read_motion_lora(base, str(lora_dir))
    runs = {}
    for scale in scales:
        start, agrees, dx, one = time.time(), [], [], []
        for i, prompt in enumerate(prompts):
            sample = SampleSpec(prompt=prompt, method="base", steps=steps, seed=seed + i,
                                motion_lora=str(lora_dir) if scale is not None else None,
                                motion_lora_scale=scale if scale is not None else 1.0)
            frames, _ = render_frames(base, None, sample, Reporter(None, None),
                                      motion_lora=lora if scale is not None else None)
            read = judge.read((frames * 255).round().astype(np.uint8))
            agrees.append(judge_mod.moves_as_named(read["centroid"], DIRECTION))
            track = judge_mod.track_direction(read["centroid"])
            dx.append(track["displacement"][0] if track["displacement"] else 0.0)
            one.extend(n == 1 for n in read["objects"])
        half = {"no motion phrase": agrees[0::2], "another direction named": agrees[1::2]}
        label = "without" if scale is None else f"scale {scale:g}"
        runs[label] = {
            "moves_right": round(float(np.mean(agrees)), 4),
            **{f"moves_right ({k})": round(float(np.mean(v)), 4) for k, v in half.items()},
            "mean_dx_px": round(float(np.mean(dx)), 3), "one_object_frames": round(float(np.mean(one)), 4),
            "seconds": round(time.time() - start, 1)}
        print(f"[motion-lora] {label}: {runs[label]}", flush=True)
    return {"videos": num_videos, "steps": steps, "seeds": f"{seed} + i", "method": "base",
            "guidance_scale": base.defaults.guidance_scale,
            "prompts": "a {colour} {shape}; odd i: + 'moving <another direction>' or 'standing still'", "runs": runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--videos", type=int, default=40, help="videos per scale in the evaluation")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--report", type=Path, default=DOCS / "motion-lora.json")
    parser.add_argument("--threads", type=int, default=1, help="1: far faster than 2 on shared cores")
    parser.add_argument("--skip-train", action="store_true", help="evaluate the LoRA already at --out")
    parser.add_argument("--scales", nargs="+", default=["none", "1"],
                        help="LoRA scales to evaluate (none: without it); runs already in --report are kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        base = engine.load_base_models(engine.ModelSpec(preset="shapes"), Path(tmp))
        report: dict = {}
        if not args.skip_train:
            state, report["training"] = train(base, steps=args.steps, lr=args.lr)
            path = motion_loras.save_motion_lora(state, args.out)
            report["training"]["file_bytes"] = path.stat().st_size
        elif args.report.exists():
            report = json.loads(args.report.read_text())
        scales = tuple(None if s == "none" else float(s) for s in args.scales)
        runs = report.get("evaluation", {}).get("runs", {}) if args.skip_train else {}
        report["evaluation"] = evaluate(base, args.out, num_videos=args.videos, scales=scales)
        report["evaluation"]["runs"] = runs | report["evaluation"]["runs"]
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"[motion-lora] wrote {args.out} and {args.report}", flush=True)


if __name__ == "__main__":
    main()
