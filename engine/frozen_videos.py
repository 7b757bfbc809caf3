"""Frozen videos: still images from the customized T2I, each repeated over every frame.

The VAE encodes each image once and the latent is repeated along the frame axis: the same latent
video as encoding F identical frames, F times cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from engine.progress import Reporter


@dataclass
class Stills:
    """N still images with the prompt and seed each came from."""

    images: list[Image.Image]
    prompts: list[str]
    seeds: list[int]


def sample_stills(
    components: dict,
    prompts: tuple[str, ...],
    num_images: int,
    seed: int,
    height: int,
    width: int,
    steps: int,
    guidance_scale: float,
    negative_prompt: str,
    reporter: Reporter,
    stage: str = "sample_images",
    batch_size: int = 1,
) -> Stills:
    """Sample image i from prompt ``prompts[i % len(prompts)]`` with seed ``seed + i``, `batch_size` per call.

    Each image has its own generator, so its starting noise does not depend on the batch it is in.
    """
    pipe = StableDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    stills = Stills([], [], [])
    for start in range(0, num_images, batch_size):
        index = range(start, min(num_images, start + batch_size))
        batch_prompts = [prompts[i % len(prompts)] for i in index]
        generators = [torch.Generator(device="cpu").manual_seed(seed + i) for i in index]
        with torch.inference_mode():
            out = pipe(batch_prompts, negative_prompt=[negative_prompt] * len(index) if negative_prompt else None,
                       height=height, width=width, num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=generators, output_type="np")
        for i, image in zip(index, out.images):
            stills.images.append(Image.fromarray((image * 255).round().astype(np.uint8)))
            stills.prompts.append(prompts[i % len(prompts)])
            stills.seeds.append(seed + i)
        reporter.step(stage, index[-1] + 1, num_images)
    return stills


@torch.no_grad()
def encode_images(vae, images: list[Image.Image]) -> torch.Tensor:
    """VAE-encode images (the latent mean, scaled) -> (N, C, h, w)."""
    pixels = np.stack([np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for img in images])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(vae.device, vae.dtype)
    latents = [vae.encode(batch[i : i + 1]).latent_dist.mean for i in range(len(images))]
    return torch.cat(latents) * vae.config.scaling_factor


def freeze(latents: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Repeat image latents (N, C, h, w) along a frame axis -> frozen video latents (N, C, F, h, w)."""
    return latents.unsqueeze(2).expand(-1, -1, num_frames, -1, -1).contiguous()


def train_data(components: dict, stills: Stills, num_frames: int):
    """Frozen videos of `stills` (latents repeated over `num_frames`) with their prompt embeddings."""
    from engine.training import TrainData

    return TrainData(latents=freeze(encode_images(components["vae"], stills.images), num_frames),
                     embeddings=encode_prompts(components, stills.prompts))


@torch.no_grad()
def encode_prompts(components: dict, prompts: list[str]) -> torch.Tensor:
    """Text embeddings for each prompt, each unique prompt encoded once -> (N, seq, dim)."""
    tokenizer, text_encoder = components["tokenizer"], components["text_encoder"]
    cache: dict[str, torch.Tensor] = {}
    for prompt in dict.fromkeys(prompts):
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(text_encoder.device)
        cache[prompt] = text_encoder(ids)[0][0]
    return torch.stack([cache[p] for p in prompts])
