"""Training sets of the shapes world, drawn from the generator with fixed seeds (tensors in [-1, 1])."""

from __future__ import annotations

import numpy as np
import torch

from engine.shapes import world


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return x.movedim(-1, -3)


def _still(rng: np.random.Generator, trail: bool) -> world.Sample:
    """A base-world still; with `trail`, of an object moving in a uniform direction, its streak drawn."""
    if trail:
        return world.image_sample(rng, trail=True, direction=world.random_direction(rng))
    return world.image_sample(rng)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] (clamped) -> uint8 (..., H, W, 3): `to_tensor`'s inverse."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).numpy()


def vae_images(n: int, seed: int, trail: bool = False) -> torch.Tensor:
    """60% plain world objects, 40% generic textures (any stripe angle, period, colour) -> (n, 3, H, W).

    `trail`: the world objects are the trail variant's (a uniform direction, the streak behind a moving one); an
    autoencoder trained without faint streaks decodes them as background."""
    rng = np.random.default_rng(seed)
    frames = [world.texture_sample(rng) if rng.random() < 0.4 else _still(rng, trail).frames[0] for _ in range(n)]
    return to_tensor(np.stack(frames))


def captioned_images(n: int, seed: int, motion_phrase_p: float = 0.5,
                     trail: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Base-world stills and captions; with probability `motion_phrase_p` a random motion phrase is appended
    (a still frame fits any direction), so the T2I reads video captions without leaving its distribution.

    `trail`: the trail variant's stills: each object moves in a uniform direction ("still" included) and shows
    its streak, and the motion phrase, when there is one, names that direction (the still now shows it)."""
    rng = np.random.default_rng(seed)
    frames, captions = [], []
    for _ in range(n):
        sample = _still(rng, trail)
        sc = sample.scene
        caption = world.image_caption(sc.shape, sc.colour)
        if rng.random() < motion_phrase_p:
            shown = sc.direction if trail else world.random_direction(rng)
            caption += " " + world.motion_phrase(shown)
        frames.append(sample.frames[0])
        captions.append(caption)
    return to_tensor(np.stack(frames)), captions


def captioned_videos(n: int, seed: int, num_frames: int = world.NUM_FRAMES,
                     trail: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Moving-object videos (n, F, 3, H, W) with their captions; directions uniform, 'still' included."""
    rng = np.random.default_rng(seed)
    samples = [world.video_sample(rng, num_frames=num_frames, trail=trail) for _ in range(n)]
    return to_tensor(np.stack([s.frames for s in samples])), [s.caption for s in samples]
