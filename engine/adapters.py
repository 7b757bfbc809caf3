"""The two LoRA adapters of Still-Moving, on diffusers' peft integration.

* ``motion``: LoRA on the motion modules' attention projections; makes the T2V model fit static videos.
* ``spatial``: LoRA on the spatial (SD) layers; learns the customized appearance, kept at test time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from engine.errors import AdapterError

MOTION = "motion"
SPATIAL = "spatial"

ATTN_PROJ = r"attn[12]\.(?:to_q|to_k|to_v|to_out\.0)"
MOTION_TARGETS = rf".*motion_modules\.\d+\.transformer_blocks\.\d+\.{ATTN_PROJ}"
SPATIAL_BLOCKS = r".*attentions\.\d+\.transformer_blocks\.\d+"  # the SD layers' transformer blocks
SPATIAL_ATTN_TARGETS = rf"{SPATIAL_BLOCKS}\.{ATTN_PROJ}"
SPATIAL_RESNET_TARGETS = r".*resnets\.\d+\.conv[12]"
SPATIAL_PROJ_TARGETS = r".*attentions\.\d+\.proj_(?:in|out)"
SPATIAL_FF_TARGETS = rf"{SPATIAL_BLOCKS}\.ff\.net\.(?:0\.proj|2)"


def motion_lora_config(rank: int, init: bool | str = True) -> LoraConfig:
    """LoRA config of the Motion Adapter (``init=False`` gives random non-zero weights, for tests)."""
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=MOTION_TARGETS, init_lora_weights=init)


def spatial_lora_config(rank: int, resnets: bool = False, projections: bool = False, feedforward: bool = False,
                        init: bool | str = True):
    """LoRA config of the Spatial Adapters; zero-initialised by default so training starts at naive injection.

    Attention projections always; wider adapters (for full fine-tunes that move more than attention) add the
    resnet convs, the transformers' proj_in/out, and their feed-forward layers."""
    patterns = [SPATIAL_ATTN_TARGETS]
    if resnets:
        patterns.append(SPATIAL_RESNET_TARGETS)
    if projections:
        patterns.append(SPATIAL_PROJ_TARGETS)
    if feedforward:
        patterns.append(SPATIAL_FF_TARGETS)
    return LoraConfig(r=rank, lora_alpha=rank, target_modules="|".join(f"(?:{p})" for p in patterns),
                      init_lora_weights=init)


def add_adapter(unet, name: str, config: LoraConfig, seed: int = 0) -> None:
    """Attach an adapter; its LoRA tensors are kept in fp32 (stable optimizer updates in half precision).

    LoRA's A matrices are drawn from the global RNG: it is seeded here (without disturbing the
    caller's RNG state) so that the same settings train the same adapter.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=name)
    for param_name, param in unet.named_parameters():
        if f".{name}." in param_name and "lora_" in param_name:
            param.data = param.data.float()


def trainable_only(unet, name: str) -> list[torch.nn.Parameter]:
    """Make the adapter `name` the only thing that gets gradients; return its parameters."""
    params = []
    for param_name, param in unet.named_parameters():
        train = f".{name}." in param_name and "lora_" in param_name
        param.requires_grad_(train)
        if train:
            params.append(param)
    return params


def activate(unet, names: list[str], weights: list[float] | None = None) -> None:
    """Enable exactly these adapters at these scales."""
    unet.set_adapters(names, weights=weights)


def adapter_state(unet, name: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors, keyed without the adapter name (portable across models)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()}


def save_adapter(unet, name: str, config: LoraConfig, path: Path) -> Path:
    """Write the adapter as safetensors; its LoRA config travels in the file's metadata.

    One metadata key only: safetensors writes several keys in a per-process random order, and the
    artifact's sha256 must be reproducible.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"lora_config": json.dumps(config.to_dict(), default=list, sort_keys=True)}
    save_file(adapter_state(unet, name), str(path), metadata=meta)
    return path


def read_adapter(path: Path) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """Read an adapter file written by `save_adapter` (safetensors; no pickle).

    Raises:
        AdapterError: the file is missing, not safetensors, or lacks a valid ``lora_config`` in its metadata.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"adapter file {str(path)!r} is not a readable safetensors file: {exc}") from exc
    if "lora_config" not in meta:
        raise AdapterError(f"adapter file {str(path)!r} has no lora_config in its metadata")
    try:
        raw = json.loads(meta["lora_config"])
        allowed = set(LoraConfig.__dataclass_fields__)
        config = LoraConfig(**{k: v for k, v in raw.items() if k in allowed and k not in {"peft_type", "task_type"}})
    except (ValueError, TypeError, AttributeError) as exc:
        raise AdapterError(f"adapter file {str(path)!r}: its lora_config is not a LoRA config: {exc}") from exc
    return state, config


def load_adapter(unet, name: str, path: Path) -> LoraConfig:
    """Attach adapter `name` to `unet` with the weights from `path`; `AdapterError` if they do not fit it."""
    state, config = read_adapter(path)
    add_adapter(unet, name, config)
    try:
        result = set_peft_model_state_dict(unet, state, adapter_name=name)
    except RuntimeError as exc:  # a tensor of another shape
        raise AdapterError(f"adapter file {str(path)!r} does not fit this model: {exc}") from exc
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise AdapterError(f"adapter file {str(path)!r} has keys this model lacks, e.g. {unexpected[:3]}")
    return config
