"""`python -m engine.shapes.direction_leak`: where in the noise schedule does the direction word matter to the T2V?

Why the base T2V ignores "moving left" (#9, #15), measured on world videos of a known direction (`--videos` per
moving direction, fixed seeds), at each timestep `t` of `--timesteps`:
  * ``x0_moves_as_true``: the share of videos whose one-step estimate of the clean video (from the UNet's noise
    prediction at `t`, under the *empty* caption) the judge sees moving in the video's true direction: how much of
    the direction the noisy video itself still shows, so that the caption is not needed to predict it;
  * ``loss_true`` / ``loss_opposite``: the epsilon loss (the training objective) with the video's caption and with
    the same caption naming the opposite direction, same noise; ``opposite_over_true`` above 1 means the model uses
    the word at that `t`.
Written to `--out` (`docs/direction-leak.json`), for the committed motion adapter or `--motion-adapter` (and a
`--domain-adapter` trained with it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, DDPMScheduler, MotionAdapter, UNetMotionModel

from engine.shapes import data, save, world
from engine.shapes import judge as judge_mod
from engine.shapes.paths import ROOT
from engine.shapes.train_unet import embed, encode_latents

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
TIMESTEPS = (999, 950, 900, 800, 600, 300)


def measure(parts: dict, adapter: MotionAdapter, judge, videos: int = 10, timesteps=TIMESTEPS,
            seed: int = 7, domain_adapter: Path | None = None) -> list[dict]:
    """One row per timestep (the module's two measures); every timestep sees the same videos, fresh noise."""
    unet = UNetMotionModel.from_unet2d(parts["unet"], adapter).eval()
    if domain_adapter is not None:  # a LoRA on the T2I's layers trained with the motion modules (direction_training)
        AnimateDiffPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                            unet=unet, scheduler=parts["scheduler"], motion_adapter=None).load_lora_weights(
            str(domain_adapter), adapter_name="domain")
    rng = np.random.default_rng(seed)
    samples = [world.video_sample(rng, direction=d) for d in OPPOSITE for _ in range(videos)]
    pixels = data.to_tensor(np.stack([s.frames for s in samples]))
    n, f = pixels.shape[:2]
    vae = parts["vae"]
    latents = encode_latents(vae, pixels.flatten(0, 1)).unflatten(0, (n, f)).transpose(1, 2)
    true = [s.caption for s in samples]
    opposite = [c.replace(f"moving {s.scene.direction}", f"moving {OPPOSITE[s.scene.direction]}")
                for c, s in zip(true, samples)]
    assert all(a != b for a, b in zip(true, opposite))
    captions = {name: embed(parts["text_encoder"], parts["tokenizer"], c)
                for name, c in (("true", true), ("opposite", opposite), ("empty", [""] * n))}
    scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=gen)
            tt = torch.full((n,), t)
            noisy = scheduler.add_noise(latents, noise, tt)
            pred = {}
            for name, (table, index) in captions.items():
                pred[name] = unet(noisy, tt, encoder_hidden_states=table[index].repeat_interleave(f, dim=0)).sample
            ab = scheduler.alphas_cumprod[t]
            x0 = (noisy - (1 - ab).sqrt() * pred["empty"]) / ab.sqrt()
            frames = vae.decode(x0.transpose(1, 2).flatten(0, 1) / vae.config.scaling_factor).sample.clamp(-1, 1)
            frames = ((frames + 1) * 127.5).round().byte().movedim(1, -1).unflatten(0, (n, f)).numpy()
            moves = [judge_mod.moves_as_named(judge.read(v)["centroid"], s.scene.direction)
                     for v, s in zip(frames, samples)]
            loss = {k: float(((pred[k] - noise) ** 2).mean()) for k in ("true", "opposite")}
            rows.append({"t": t, "snr": round(float(ab / (1 - ab)), 5), "x0_moves_as_true": round(float(np.mean(moves)), 4),
                         "loss_true": round(loss["true"], 6), "loss_opposite": round(loss["opposite"], 6),
                         "opposite_over_true": round(loss["opposite"] / loss["true"], 4)})
            print(f"[direction-leak] {rows[-1]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=10, help="per moving direction")
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(TIMESTEPS))
    parser.add_argument("--motion-adapter", type=Path, help="default: the committed one")
    parser.add_argument("--domain-adapter", type=Path, help="a domain adapter directory to load beside it")
    parser.add_argument("--out", type=Path, default=Path("docs/direction-leak.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    parts, judge = save.load_base(ROOT), save.load_judge(ROOT)
    adapter = MotionAdapter.from_pretrained(args.motion_adapter).eval() if args.motion_adapter else parts["motion_adapter"]
    rows = measure(parts, adapter, judge, args.videos, tuple(args.timesteps), domain_adapter=args.domain_adapter)
    settings = vars(args) | {"motion_adapter": str(args.motion_adapter or "committed"), "out": str(args.out),
                             "domain_adapter": None if args.domain_adapter is None else str(args.domain_adapter),
                             "seconds": round(time.time() - start, 1)}
    args.out.write_text(json.dumps({"settings": settings, "timesteps": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
