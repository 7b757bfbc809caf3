"""Tiny customized checkpoints for the `tiny` base, in the formats users upload.

Used by the demo and the tests: a perturbed UNet (a stand-in for a DreamBooth fine-tune) saved as a
diffusers state dict or as an original-LDM single file, and random non-zero LoRAs in diffusers/peft
and kohya key layouts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from engine.checkpoint_formats import diffusers_unet_to_ldm, peft_lora_to_kohya
from engine.tiny_models import build_tiny_components

FORMATS = ("lora", "lora-kohya", "unet", "ldm")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _tiny_unet():
    with tempfile.TemporaryDirectory() as scratch:
        return build_tiny_components(Path(scratch))["unet"]


def _perturbed_unet(seed: int, scale: float = 0.05):
    unet = _tiny_unet()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in unet.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    return unet


def _random_lora(seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    unet = _tiny_unet()
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)
    return {k: v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def make_tiny_checkpoint(fmt: str, path: Path, seed: int = 0) -> Path:
    """Write a customized checkpoint for the `tiny` base in upload format `fmt` (see `FORMATS`)."""
    from engine import tiny_models
    from engine.errors import SpecError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "unet":
        tensors = {k: v.contiguous() for k, v in _perturbed_unet(seed).state_dict().items()}
    elif fmt == "ldm":
        cfg = tiny_models.UNET_CONFIG
        tensors = diffusers_unet_to_ldm(_perturbed_unet(seed).state_dict(), cfg["layers_per_block"])
    elif fmt == "lora":
        tensors = {"unet." + k: v for k, v in _random_lora(seed).items()}
    elif fmt == "lora-kohya":
        tensors = peft_lora_to_kohya(_random_lora(seed), alpha=4)
    else:
        raise SpecError(f"format={fmt!r}; expected one of {FORMATS}", field="format")
    save_file(tensors, str(path), metadata={"format": "pt"})  # one key: several are written in random order
    return path
