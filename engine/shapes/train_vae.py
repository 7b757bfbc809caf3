"""Stage 1: the world's `AutoencoderKL` (32x32x3 <-> 8x8x4), trained on generator images.

Reconstruction L1 + MSE with a tiny KL term (SD's VAE adds perceptual and adversarial terms; at this
size plain pixel losses already reconstruct edges and stripes). The latent `scaling_factor` is set to
1/std of the training latents, as SD 1.5's 0.18215 was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from engine.shapes import data, loop
from engine.shapes.architecture import VAE_CONFIG


def train_vae(steps: int = 2000, batch: int = 32, lr: float = 1e-3, seed: int = 0,
              trail: bool = False) -> tuple[AutoencoderKL, dict]:
    """Train from nothing (`trail`: on the trail variant's objects); return the VAE (eval, its scaling factor set)
    and metrics."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    quick = steps <= 10  # a smoke run (tests): a few images
    images = data.vae_images(batch * 4 if quick else max(4096, batch * 64), seed, trail)
    opt, sched = loop.optimizer(vae.parameters(), lr, steps)
    log = loop.Log("vae", steps)
    gen = torch.Generator().manual_seed(seed)
    vae.train()
    for step in range(steps):
        x = images[torch.randint(0, len(images), (batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        loop.update(opt, sched, loss)
        log(step, float(loss.detach()))
    vae.eval()
    held = 64 if quick else 512
    held_out = data.vae_images(held, seed + 1, trail)
    with torch.no_grad():
        latents = torch.cat([vae.encode(held_out[i:i + 128]).latent_dist.mean for i in range(0, held, 128)])
        recon = torch.cat([vae.decode(latents[i:i + 128]).sample for i in range(0, held, 128)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    mse = float(F.mse_loss(recon.clamp(-1, 1), held_out))
    return vae, {"steps": steps, "batch": batch, "seconds": log.seconds, "held_out_mse": round(mse, 5),
                 "scaling_factor": vae.config.scaling_factor, "loss_curve": log.curve, "trail": trail}
