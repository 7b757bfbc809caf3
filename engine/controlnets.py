"""ControlNets: loaded from a hub id or local directory, or built from the base UNet (``builtin``).

``builtin`` is `ControlNetModel.from_unet` of the base's UNet, its conditioning embedding sized to the base VAE's
downsampling. For `tiny` its zero convolutions (ControlNet's zero-init output layers) are re-initialised seeded
and non-zero, so that tests see a control act on the real pipeline; for any other preset it is **untrained**:
the zero convolutions make it add nothing. The `shapes` preset serves a trained one instead
(`models/shapes/controlnet-canny/`, `engine/shapes/train_controlnet.py`).
"""

from __future__ import annotations

import torch
from diffusers import ControlNetModel

from engine.errors import ModelLoadError
from engine.models import BaseModels, place
from engine.tiny_models import TINY_SEED

BUILTIN = "builtin"
EMBEDDING_CHANNELS = (16, 32, 96, 256)  # ControlNet's conditioning embedding (SD 1.5: downsamples by 8)


def zero_convolutions(controlnet: ControlNetModel) -> list[torch.nn.Conv2d]:
    """The output layers ControlNet initialises to zero: one per down-block residual, the middle block's, and
    the conditioning embedding's last."""
    return [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out]


def from_unet(unet, vae) -> ControlNetModel:
    """`ControlNetModel.from_unet` of `unet` (its encoder copied, zero convolutions zero), the conditioning
    embedding downsampling image-size maps as much as `vae` does (one stride-2 step per VAE level past the first)."""
    levels = len(vae.config.block_out_channels)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBEDDING_CHANNELS[:levels])


def build_from_unet(base: BaseModels) -> ControlNetModel:
    """An untrained ControlNet shaped for the base UNet (`tiny`: with seeded non-zero zero convolutions)."""
    torch.manual_seed(TINY_SEED + 4)
    controlnet = from_unet(base.components["unet"], base.components["vae"])
    if base.spec.preset == "tiny":
        generator = torch.Generator().manual_seed(TINY_SEED + 5)
        with torch.no_grad():
            for conv in zero_convolutions(controlnet):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.2)
    return controlnet


def load_controlnet(base: BaseModels, source: str) -> ControlNetModel:
    """The ControlNet at `source` (hub id or local directory, or ``builtin``) on the base's device and dtype."""
    if source == BUILTIN:
        controlnet = build_from_unet(base)
    else:
        spec = base.spec
        try:
            controlnet = ControlNetModel.from_pretrained(source, cache_dir=spec.cache_dir, torch_dtype=base.dtype,
                                                         local_files_only=spec.local_files_only)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load controlnet={source!r}: {exc}") from exc
    return place(controlnet, base.device, base.dtype).eval().requires_grad_(False)
