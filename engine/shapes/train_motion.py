"""Stage 4: the world's T2V, a diffusers `MotionAdapter` trained on moving-object videos with the T2I
frozen (AnimateDiff's recipe): `UNetMotionModel.from_unet2d(unet, adapter)` then animates the T2I.

Each motion module's output projection starts at zero (as in AnimateDiff), so training starts from the
T2I applied frame by frame. Only motion-module parameters get gradients.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler, DDPMScheduler, MotionAdapter, UNetMotionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from engine import adapters
from engine.shapes import data, loop, world
from engine.shapes import judge as judge_mod
from engine.shapes.architecture import MOTION_CONFIG
from engine.shapes.train_unet import CAPTION_DROPOUT, embed, encode_latents

DOMAIN = "domain"


def fresh_adapter(seed: int) -> MotionAdapter:
    torch.manual_seed(seed)
    adapter = MotionAdapter(**MOTION_CONFIG)
    with torch.no_grad():
        for name, module in adapter.named_modules():
            if name.endswith("proj_out"):
                module.weight.zero_()
                module.bias.zero_()
    return adapter


def extract_adapter(unet: UNetMotionModel) -> MotionAdapter:
    """The motion modules of a trained `UNetMotionModel` as a `MotionAdapter` (what `save_motion_modules` saves)."""
    adapter = MotionAdapter(**MOTION_CONFIG)
    adapter.load_state_dict({k: v for k, v in unet.state_dict().items() if "motion_modules" in k})
    return adapter.eval()


def check_videos(parts: dict, unet: UNetMotionModel, per_direction: int = 4, seed: int = 0, steps: int = 25,
                 guidance_scale: float = 7.5) -> tuple[list[world.Scene], np.ndarray]:
    """The motion check's videos: `per_direction` scenes of every direction (seeded), sampled from their captions
    -> (scenes, uint8 frames (N, F, H, W, 3))."""
    pipe = AnimateDiffPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                               unet=unet, scheduler=DDIMScheduler.from_config(parts["scheduler"].config),
                               motion_adapter=None)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(seed)
    scenes = [world.random_scene(rng, direction=d) for d in world.DIRECTIONS for _ in range(per_direction)]
    prompts = [world.video_caption(s) for s in scenes]
    frames = pipe(prompts, num_frames=world.NUM_FRAMES, num_inference_steps=steps, guidance_scale=guidance_scale,
                  height=world.SIZE, width=world.SIZE, output_type="np",
                  generator=torch.Generator().manual_seed(seed)).frames
    return scenes, (np.asarray(frames) * 255).round().astype(np.uint8)


def motion_check(parts: dict, unet: UNetMotionModel, judge, per_direction: int = 4, seed: int = 0,
                 steps: int = 25, guidance_scale: float = 7.5) -> dict:
    """Sample videos of every direction and let the judge's centroid track say whether they move as named."""
    scenes, frames = check_videos(parts, unet, per_direction, seed, steps, guidance_scale)
    ok, one = [], []
    for scene, video in zip(scenes, frames):
        read = judge.read(video)
        ok.append(judge_mod.moves_as_named(read["centroid"], scene.direction))
        one.extend(n == 1 for n in read["objects"])
    by_dir = {d: float(np.mean(ok[i * per_direction:(i + 1) * per_direction])) for i, d in enumerate(world.DIRECTIONS)}
    return {"direction_agrees": float(np.mean(ok)), "one_object": float(np.mean(one)), "by_direction": by_dir}


def train_motion(parts: dict, steps: int | None = None, batch: int = 8, lr: float = 3e-4, seed: int = 5,
                 num_videos: int = 6000, judge=None, eval_every: int = 1000,
                 start: MotionAdapter | None = None, check_kwargs: dict | None = None,
                 on_check=None, domain: LoraConfig | None = None,
                 t_min: int = 0, trail: bool = False) -> tuple[MotionAdapter, dict]:
    """Train the motion modules over the frozen T2I (from `start`'s weights when given, else from AnimateDiff's
    zero-output init); return the adapter and metrics.

    With `domain`, a LoRA of that config on the T2I's spatial layers (a domain adapter, AnimateDiff v3's name for
    a LoRA on the image layers) trains with them, so the per-frame features can carry what the video captions say;
    its peft state dict is returned in the metrics under ``domain_lora``. `t_min`: train only timesteps from there
    on (`loop.epsilon_loss`). `trail`: on the trail variant's videos (`data.captioned_videos`)."""
    steps = steps or 3000
    videos, captions = data.captioned_videos(num_videos if steps > 10 else 32, seed, trail=trail)
    n, f = videos.shape[:2]
    latents = encode_latents(parts["vae"], videos.flatten(0, 1)).unflatten(0, (n, f)).transpose(1, 2).contiguous()
    del videos
    drop = np.random.default_rng(seed).random(n) < CAPTION_DROPOUT
    captions = ["" if d else c for c, d in zip(captions, drop)]
    table, rows = embed(parts["text_encoder"], parts["tokenizer"], captions)
    unet = UNetMotionModel.from_unet2d(parts["unet"], start if start is not None else fresh_adapter(seed))
    unet.requires_grad_(False)
    domain_params = []
    if domain is not None:  # first: `trainable_only` turns off every gradient but the domain adapter's
        adapters.add_adapter(unet, DOMAIN, domain, seed)
        domain_params = adapters.trainable_only(unet, DOMAIN)
    params = [p for name, p in unet.named_parameters() if "motion_modules" in name]
    for p in params:
        p.requires_grad_(True)
    params += domain_params
    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    opt, sched = loop.optimizer(params, lr, steps, warmup=100)
    log = loop.Log("motion", steps)
    checks = []
    gen = torch.Generator().manual_seed(seed)
    unet.train()
    for step in range(steps):
        loss = loop.epsilon_loss(unet, latents, lambda idx: table[rows[idx]].repeat_interleave(f, dim=0),
                                 noise_scheduler, batch, gen, t_min)
        loop.update(opt, sched, loss, clip=params)
        log(step, float(loss.detach()))
        if judge is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            unet.eval()
            check = motion_check(parts, unet, judge, **(check_kwargs or {})) | {"step": step + 1}
            unet.train()
            checks.append(check)
            if on_check is not None:
                on_check(checks)
            print(f"[motion] at {step + 1}: {check}", flush=True)
    unet.eval()
    extra = {}
    if domain is not None:
        extra["domain_lora"] = get_peft_model_state_dict(unet, adapter_name=DOMAIN)
        unet.delete_adapters(DOMAIN)
    return extract_adapter(unet), extra | {"steps": steps, "batch": batch, "lr": lr, "num_videos": num_videos,
                                           "t_min": t_min, "trail": trail,
                                   "seconds": log.seconds, "loss_curve": log.curve, "motion_checks": checks,
                                   "parameters": sum(p.numel() for p in params)}
