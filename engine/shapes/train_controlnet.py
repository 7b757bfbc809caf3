"""Stage 7: the world's canny ControlNet, `ControlNetModel.from_unet` of the T2I, trained with the T2I frozen.

Pairs come from the generator: a base-world still, its caption, and the Canny edges of the still computed by
the same function the product applies to a reference video (`engine.conditioning.canny`, thresholds 100/200),
so training and serving agree. Latents, edge maps and caption embeddings are computed once up front; captions
are dropped 10% of the time as for the T2I (the pipeline applies the control to both halves of classifier-free
guidance). As training goes, conditioning is measured on held-out stills: the IoU of the sampled object's mask
(the judge's analytic `measure`) against the generator's mask of the still whose edges drove it.

    python -m engine.shapes.train_controlnet            # trains and saves models/shapes/controlnet-canny/
    python -m engine.shapes.build --stages controlnet   # the same, as a stage of the world build
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDIMScheduler, DDPMScheduler, StableDiffusionControlNetPipeline
from PIL import Image

from engine import conditioning, controlnets
from engine.shapes import data, loop, world
from engine.shapes import judge as judge_mod
from engine.shapes.train_unet import CAPTION_DROPOUT, embed, encode_latents

STEPS = 1600
MAX_TRAIN_SECONDS = 780  # the loop stops here if the machine is slower than planned (the 15 minutes in all)
CONTROLNET_DIR = "controlnet-canny"


def edge_maps(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 stills -> their Canny maps as the pipeline feeds them: (N, 3, H, W) uint8 of 0 / 255."""
    return torch.from_numpy(conditioning.canny(frames)).permute(0, 3, 1, 2).contiguous()


def held_out(n: int, seed: int) -> list[world.Sample]:
    """Base-look stills the training never sees (their own seed)."""
    rng = np.random.default_rng(seed)
    return [world.image_sample(rng) for _ in range(n)]


@torch.no_grad()
def control_check(parts: dict, controlnet: ControlNetModel, samples: list[world.Sample], judge=None,
                  steps: int = 25, guidance_scale: float = 7.5, seed: int = 0, scale: float = 1.0) -> dict:
    """Sample each held-out still's caption under its edges; the mean IoU of the sampled object's mask against the
    still's mask, the one-object rate, and (with a judge) the shape and colour read right."""
    pipe = StableDiffusionControlNetPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
        controlnet=controlnet, scheduler=DDIMScheduler.from_config(parts["scheduler"].config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    frames = np.stack([s.frames[0] for s in samples])
    prompts = [world.image_caption(s.scene.shape, s.scene.colour) for s in samples]
    images = pipe(prompts, image=[Image.fromarray(e) for e in conditioning.canny(frames)], num_inference_steps=steps,
                  guidance_scale=guidance_scale, controlnet_conditioning_scale=scale, output_type="np",
                  generator=torch.Generator().manual_seed(seed), height=world.SIZE, width=world.SIZE).images
    images = (images * 255).round().astype(np.uint8)
    ious = judge_mod.frame_ious(images, np.stack([s.masks[0] for s in samples]))
    out = {"iou": round(float(np.mean(ious)), 4), "samples": len(samples),
           "one_object": float(np.mean([judge_mod.measure(im).count == 1 for im in images]))}
    if judge is not None:
        read = judge.read(images)
        out["shape"] = float(np.mean([r == s.scene.shape for r, s in zip(read["shape"], samples)]))
        out["colour"] = float(np.mean([r == s.scene.colour for r, s in zip(read["colour"], samples)]))
    return out


def train_controlnet(parts: dict, steps: int = STEPS, batch: int = 32, lr: float = 1e-3, seed: int = 7,
                     num_images: int = 10000, judge=None, eval_every: int = 200, eval_images: int = 32,
                     max_seconds: float | None = MAX_TRAIN_SECONDS) -> tuple[ControlNetModel, dict]:
    """Train a ControlNet on (edges of a still -> the still) with the T2I frozen; returns it and its metrics
    (loss curve, the held-out IoU curve with the uncontrolled T2I's IoU as step 0, seconds).

    `max_seconds` bounds the training loop's wall time (a shared machine can be slower than planned): past it the
    loop stops after a last check, and `steps_done` records where (the learning-rate schedule is `steps`')."""
    start = time.time()
    torch.manual_seed(seed)
    unet = parts["unet"].eval().requires_grad_(False)
    controlnet = controlnets.from_unet(unet, parts["vae"]).train()
    pixels, captions = data.captioned_images(num_images if steps > 10 else 256, seed)
    edges = edge_maps(((pixels.movedim(-3, -1) + 1) * 127.5).round().to(torch.uint8).numpy())
    latents = encode_latents(parts["vae"], pixels)
    del pixels
    drop = np.random.default_rng(seed).random(len(captions)) < CAPTION_DROPOUT
    table, rows = embed(parts["text_encoder"], parts["tokenizer"], ["" if d else c for c, d in zip(captions, drop)])
    prep_seconds = round(time.time() - start, 1)
    print(f"[controlnet] {len(latents)} pairs prepared in {prep_seconds} s", flush=True)

    samples = held_out(eval_images, seed + 10_000)
    checks = []

    def check(step: int) -> None:
        controlnet.eval()
        result = control_check(parts, controlnet, samples, judge) | {"step": step}
        controlnet.train()
        checks.append(result)
        print(f"[controlnet] held-out at {step}: {result}", flush=True)

    check(0)  # zero convolutions: the T2I alone
    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    params = list(controlnet.parameters())
    opt, sched = loop.optimizer(params, lr, steps, warmup=100)
    log = loop.Log("controlnet", steps)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        x0, cond, text = latents[idx], edges[idx].float() / 255.0, table[rows[idx]]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        down, mid = controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        pred = unet(noisy, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = F.mse_loss(pred, noise)
        loop.update(opt, sched, loss, clip=params)
        log(step, float(loss.detach()))
        out_of_time = max_seconds is not None and time.time() - log.start > max_seconds
        if (step + 1) % eval_every == 0 or step + 1 == steps or out_of_time:
            check(step + 1)
        if out_of_time:
            print(f"[controlnet] stopped at step {step + 1}: past {max_seconds} s", flush=True)
            break
    controlnet.eval().requires_grad_(False)
    return controlnet, {"steps": steps, "steps_done": step + 1, "max_seconds": max_seconds, "batch": batch, "lr": lr, "seed": seed, "num_images": len(latents),
                        "caption_dropout": CAPTION_DROPOUT, "canny_thresholds": [100, 200],
                        "prep_seconds": prep_seconds, "seconds": round(time.time() - start, 1),
                        "train_seconds": log.seconds, "loss_curve": log.curve, "iou_curve": checks,
                        "parameters": sum(p.numel() for p in controlnet.parameters()),
                        "threads": torch.get_num_threads()}


def save_controlnet(controlnet: ControlNetModel, out: Path) -> Path:
    """`out/controlnet-canny/` in the diffusers layout: config.json + diffusion_pytorch_model.safetensors."""
    directory = Path(out) / CONTROLNET_DIR
    controlnet.save_pretrained(directory, safe_serialization=True)
    return directory


def run(out: Path, quick: bool = False) -> dict:
    """Train on the world saved under `out` and save the ControlNet there (`quick`: a few steps, a smoke test)."""
    from engine.shapes import save

    parts = save.load_base(out)
    kwargs = dict(steps=4, num_images=256, eval_every=2, eval_images=2) if quick else {}
    controlnet, metrics = train_controlnet(parts, judge=save.load_judge(out), **kwargs)
    save_controlnet(controlnet, out)
    return metrics


def main(argv: list[str] | None = None) -> None:
    from engine.shapes.build import DEFAULT_OUT, record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="a few steps (a smoke test, not a ControlNet)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    metrics = run(args.out, args.quick)
    metrics["wall_seconds"] = round(time.time() - start, 1)
    record(args.out, "controlnet", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "loss_curve"}, indent=1), flush=True)


if __name__ == "__main__":
    main()
