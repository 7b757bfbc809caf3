"""Converters between checkpoint key layouts: diffusers UNet -> original LDM, peft LoRA -> kohya.

They make the upload formats of the tiny and shapes worlds (`tiny_checkpoints`, `shapes.checkpoints`) and the
kohya exports of Spatial Adapters (`exports`); uploads in kohya layout are read by diffusers' own loader.
"""

from __future__ import annotations

import torch

RESNET_LDM_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
TOP_LDM_NAMES = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                 "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet(prefix_from: str, prefix_to: str, key: str) -> str:
    rest = key[len(prefix_from):]
    for name, ldm in RESNET_LDM_NAMES.items():
        if rest.startswith(name + "."):
            return prefix_to + ldm + rest[len(name):]
    raise KeyError(key)


def diffusers_unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict:
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
    return {"model.diffusion_model." + mapping[k]: v for k, v in state.items()}


def peft_lora_to_kohya(lora: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Rename peft LoRA keys of a UNet (``…to_q.lora_A.weight``, without ``unet.``) to kohya/A1111 ones
    (``lora_unet_…lora_down.weight``, ``.lora_up.weight``, ``.alpha``): diffusers' own
    ``convert_state_dict_to_kohya``, with each ``.alpha`` the LoRA's ``lora_alpha`` as a float32 scalar
    (diffusers writes the rank, as an integer: the same scale only when alpha equals the rank)."""
    from diffusers.utils import convert_state_dict_to_kohya

    out = convert_state_dict_to_kohya({f"unet.{key}": tensor for key, tensor in lora.items()})
    return {key: torch.tensor(float(alpha)) if key.endswith(".alpha") else tensor for key, tensor in out.items()}
