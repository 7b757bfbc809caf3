"""How far a customized T2I moved the spatial features that Still-Moving injects into the T2V model.

Both UNets (base and customized, 2D) see the same inputs: VAE latents of generator stills of the customization's
look, noised at a spread of timesteps, under their captions. Forward hooks on every spatial layer the
injection replaces (self- and cross-attention, feed-forward, resnet blocks) record their outputs; the drift of a
layer is ||customized - base|| / ||base|| of its output, averaged over the inputs. Reported per kind of layer and
over all, with the drift of the noise prediction itself.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D

from engine.shapes import data, world
from engine.shapes.train_unet import encode_latents

KINDS = ("self_attention", "cross_attention", "feed_forward", "resnet")


def _kind(name: str, module) -> str | None:
    if isinstance(module, Attention):
        return "self_attention" if name.endswith("attn1") else "cross_attention" if name.endswith("attn2") else None
    if isinstance(module, FeedForward):
        return "feed_forward"
    if isinstance(module, ResnetBlock2D):
        return "resnet"
    return None


def _outputs(unet, latents, timesteps, embeds) -> tuple[dict[str, tuple[str, torch.Tensor]], torch.Tensor]:
    """Each hooked layer's (kind, output) and the noise prediction."""
    recorded: dict[str, tuple[str, torch.Tensor]] = {}
    hooks = []
    for name, module in unet.named_modules():
        kind = _kind(name, module)
        if kind is not None:
            hooks.append(module.register_forward_hook(
                lambda _m, _i, out, name=name, kind=kind: recorded.__setitem__(
                    name, (kind, out[0] if isinstance(out, tuple) else out))))
    try:
        with torch.no_grad():
            eps = unet(latents, timesteps, encoder_hidden_states=embeds).sample
    finally:
        for hook in hooks:
            hook.remove()
    return recorded, eps


def feature_drift(base_parts: dict, custom_parts: dict, num_stills: int = 24, seed: int = 3) -> dict:
    """Relative drift of the injected layers' outputs (customized vs base T2I components, each UNet under its own
    text encoder's embeddings, as the T2V model sees it) on two-tone stills of the world."""
    rng = np.random.default_rng(seed)
    samples = [world.image_sample(rng, look="two-tone") for _ in range(num_stills)]
    frames = np.stack([s.frames[0] for s in samples])
    captions = [world.image_caption(s.scene.shape, s.scene.colour, "two-tone") for s in samples]
    tok = base_parts["tokenizer"]
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        embeds = {who: parts["text_encoder"](ids)[0] for who, parts in (("base", base_parts), ("custom", custom_parts))}
        latents = encode_latents(base_parts["vae"], data.to_tensor(frames))
        scheduler = base_parts["scheduler"]
        timesteps = torch.linspace(50, scheduler.config.num_train_timesteps - 50, num_stills).long()
        noisy = scheduler.add_noise(latents, torch.randn(latents.shape, generator=gen), timesteps)
    base_out, base_eps = _outputs(base_parts["unet"], noisy, timesteps, embeds["base"])
    custom_out, custom_eps = _outputs(custom_parts["unet"], noisy, timesteps, embeds["custom"])
    per_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    for name, (kind, ref) in base_out.items():
        diff = (custom_out[name][1] - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp(min=1e-8)
        per_kind[kind].append(float(diff.mean()))
    eps_drift = float(((custom_eps - base_eps).flatten(1).norm(dim=1) / base_eps.flatten(1).norm(dim=1)).mean())
    layers = [v for values in per_kind.values() for v in values]
    return {"mean": round(float(np.mean(layers)), 4),
            **{k: round(float(np.mean(v)), 4) for k, v in per_kind.items() if v},
            "noise_prediction": round(eps_drift, 4), "layers": len(layers), "stills": num_stills}
