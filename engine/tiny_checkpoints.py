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

from engine.tiny_models import build_tiny_components

FORMATS = ("lora", "lora-kohya", "unet", "ldm")
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
RESNET_LDM_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP_LDM_NAMES = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                 "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


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


def _resnet(prefix_from: str, prefix_to: str, key: str) -> str:
    rest = key[len(prefix_from):]
    for name, ldm in RESNET_LDM_NAMES.items():
        if rest.startswith(name + "."):
            return prefix_to + ldm + rest[len(name):]
    raise KeyError(key)


def diffusers_unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int, num_blocks: int) -> dict:
    """Rename a diffusers SD UNet state dict to the original LDM layout (``model.diffusion_model.…``)."""
    lpb = layers_per_block
    mapping: dict[str, str] = {}
    for key in state:
        parts = key.split(".")
        if parts[0] in ("down_blocks", "up_blocks") and parts[2] in ("resnets", "attentions"):
            i, kind, j = int(parts[1]), parts[2], int(parts[3])
            block = i * (lpb + 1) + j + (1 if parts[0] == "down_blocks" else 0)
            side = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
            head = ".".join(parts[:4]) + "."
            if kind == "resnets":
                mapping[key] = _resnet(head, f"{side}.{block}.0.", key)
            else:
                mapping[key] = f"{side}.{block}.1." + key[len(head):]
        elif parts[0] == "down_blocks" and parts[2] == "downsamplers":
            i = int(parts[1])
            mapping[key] = f"input_blocks.{(i + 1) * (lpb + 1)}.0.op." + parts[-1]
        elif parts[0] == "up_blocks" and parts[2] == "upsamplers":
            i = int(parts[1])
            has_attn = any(k.startswith(f"up_blocks.{i}.attentions.") for k in state)
            mapping[key] = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}.conv." + parts[-1]
        elif parts[0] == "mid_block":
            kind, j = parts[1], int(parts[2])
            head = ".".join(parts[:3]) + "."
            if kind == "resnets":
                mapping[key] = _resnet(head, f"middle_block.{0 if j == 0 else 2}.", key)
            else:
                mapping[key] = "middle_block.1." + key[len(head):]
        else:
            module = key.rsplit(".", 1)[0]
            mapping[key] = TOP_LDM_NAMES[module] + key[len(module):]
    assert num_blocks >= 1
    return {"model.diffusion_model." + mapping[k]: v for k, v in state.items()}


def _random_lora(seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    unet = _tiny_unet()
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.mul_(0.5)
    return {k: v.contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def _to_kohya(lora: dict[str, torch.Tensor], rank: int = 4) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in lora.items():
        module, kind = key.rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        out[f"{stem}.lora_down.weight" if kind.startswith("A") else f"{stem}.lora_up.weight"] = tensor
        out[f"{stem}.alpha"] = torch.tensor(float(rank))
    return out


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
        tensors = diffusers_unet_to_ldm(_perturbed_unet(seed).state_dict(), cfg["layers_per_block"],
                                        len(cfg["block_out_channels"]))
    elif fmt == "lora":
        tensors = {"unet." + k: v for k, v in _random_lora(seed).items()}
    elif fmt == "lora-kohya":
        tensors = _to_kohya(_random_lora(seed))
    else:
        raise SpecError(f"format={fmt!r}; expected one of {FORMATS}", field="format")
    save_file(tensors, str(path), metadata={"format": "pt"})  # one key: several are written in random order
    return path
