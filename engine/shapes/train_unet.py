"""Stage 3: the world's T2I, a `UNet2DConditionModel` trained from nothing on captioned generator stills.

Latents and caption embeddings are computed once up front (the VAE and text encoder are frozen, as in
SD), captions are dropped 10% of the time so classifier-free guidance works, and an EMA of the weights
is what gets saved. With a judge at hand, shape and colour adherence are measured as training goes.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from engine.shapes import data, loop, world
from engine.shapes.architecture import UNET_CONFIG

CAPTION_DROPOUT = 0.1


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> scaled latent means (N, 4, h, w)."""
    out = [vae.encode(pixels[i:i + batch]).latent_dist.mean for i in range(0, len(pixels), batch)]
    return torch.cat(out) * vae.config.scaling_factor


def embed(text_encoder, tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique caption embeddings (U, seq, dim) and each caption's row in them (N,)."""
    unique = list(dict.fromkeys(captions))
    ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        table = text_encoder(ids)[0]
    row = {c: i for i, c in enumerate(unique)}
    return table, torch.tensor([row[c] for c in captions])


@torch.no_grad()
def caption_distances(text_encoder, tokenizer) -> dict:
    """How far apart the text encoder keeps captions that differ in one word: by direction of motion, by colour,
    by shape (mean over token positions of the L2 distance between embeddings, over every colour and shape).

    The T2V reads the direction only through these embeddings (motion modules have no cross-attention), so a
    text encoder that merges "left" and "right" leaves the motion adapter nothing to follow."""
    def table(captions):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
        return text_encoder(ids.input_ids)[0]

    def mean_distance(pairs):
        a, b = table([p for p, _ in pairs]), table([q for _, q in pairs])
        return round(float((a - b).norm(dim=-1).mean()), 4)

    combos = [(s, c) for s in world.SHAPES for c in world.COLOURS]
    moving = [d for d in world.DIRECTIONS if d != "still"]
    caption = world.image_caption
    return {
        "direction": mean_distance([(f"{caption(s, c)} moving {d}", f"{caption(s, c)} moving {e}")
                                    for s, c in combos for d in moving for e in moving if d < e]),
        "colour": mean_distance([(caption(s, c), caption(s, k)) for s, c in combos for k in world.COLOURS if c < k]),
        "shape": mean_distance([(caption(s, c), caption(t, c)) for s, c in combos for t in world.SHAPES if s < t]),
    }


def t2i_pipeline(parts: dict, unet) -> StableDiffusionPipeline:
    """The world's T2I as a quiet DDIM `StableDiffusionPipeline` over `unet` (the checks' and the class images')."""
    pipe = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                   unet=unet, scheduler=DDIMScheduler.from_config(parts["scheduler"].config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def conditioning_check(parts: dict, unet, judge, per_prompt: int = 3, seed: int = 0, steps: int = 25,
                       guidance_scale: float = 7.5) -> dict:
    """Sample every (shape, colour) prompt and let the judge read shape and colour."""
    pipe = t2i_pipeline(parts, unet)
    combos = [(s, c) for s in world.SHAPES for c in world.COLOURS] * per_prompt
    prompts = [world.image_caption(s, c) for s, c in combos]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np",
                  generator=torch.Generator().manual_seed(seed), height=world.SIZE, width=world.SIZE).images
    read = judge.read((images * 255).round().astype(np.uint8))
    return {"shape": float(np.mean([r == s for r, (s, _) in zip(read["shape"], combos)])),
            "colour": float(np.mean([r == c for r, (_, c) in zip(read["colour"], combos)])),
            "one_object": float(np.mean([n == 1 for n in read["objects"]])), "samples": len(combos)}


def train_unet(parts: dict, steps: int | None = None, batch: int = 64, lr: float = 4e-4, seed: int = 3,
               num_images: int = 40000, judge=None, eval_every: int = 1000,
               train_text_encoder: bool = False, trail: bool = False,
               on_check=None) -> tuple[UNet2DConditionModel, dict]:
    """Train the T2I; returns the EMA UNet and metrics (loss curve, conditioning checks, seconds).

    With `train_text_encoder`, `parts["text_encoder"]` is trained too and ends holding its EMA weights.
    `trail`: on the trail variant's stills (`data.captioned_images`); `on_check(unet, check)` may add to a check."""
    steps = steps or 7000
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    pixels, captions = data.captioned_images(num_images if steps > 10 else 256, seed, trail=trail)
    latents = encode_latents(parts["vae"], pixels)
    del pixels
    captions = [c if r >= CAPTION_DROPOUT else "" for c, r in zip(captions, np.random.default_rng(seed).random(len(captions)))]
    text_encoder, tokenizer = parts["text_encoder"], parts["tokenizer"]
    table, rows = embed(text_encoder, tokenizer, captions)
    params = list(unet.parameters())
    if train_text_encoder:
        text_encoder.train().requires_grad_(True)
        params += list(text_encoder.parameters())
        unique = list(dict.fromkeys(captions))
        unique_ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length,
                               return_tensors="pt").input_ids
    def condition(idx: torch.Tensor) -> torch.Tensor:
        return text_encoder(unique_ids[rows[idx]])[0] if train_text_encoder else table[rows[idx]]

    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    opt, sched = loop.optimizer(params, lr, steps, warmup=200)
    ema = loop.EMA(unet, 0.999)
    text_ema = loop.EMA(text_encoder, 0.999) if train_text_encoder else None  # saved with the EMA UNet
    log = loop.Log("unet", steps)
    checks = []
    gen = torch.Generator().manual_seed(seed)
    unet.train()
    for step in range(steps):
        loss = loop.epsilon_loss(unet, latents, condition, noise_scheduler, batch, gen)
        loop.update(opt, sched, loss, clip=params)
        ema.update(unet, step)
        if text_ema is not None:
            text_ema.update(text_encoder, step)
        log(step, float(loss.detach()))
        if judge is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            check_parts = parts if text_ema is None else parts | {"text_encoder": text_ema.module}
            check = conditioning_check(check_parts, ema.module, judge) | {"step": step + 1}
            if on_check is not None:
                check |= on_check(ema.module)
            checks.append(check)
            print(f"[unet] conditioning at {step + 1}: {check}", flush=True)
    if text_ema is not None:
        text_encoder.load_state_dict(text_ema.module.state_dict())
    text_encoder.eval().requires_grad_(False)
    return ema.module, {"caption_distances": caption_distances(text_encoder, tokenizer),
                        "steps": steps, "batch": batch, "lr": lr, "num_images": num_images,
                        "caption_dropout": CAPTION_DROPOUT, "train_text_encoder": train_text_encoder, "trail": trail,
                        "seconds": log.seconds, "loss_curve": log.curve, "conditioning_checks": checks,
                        "parameters": sum(p.numel() for p in unet.parameters())}
