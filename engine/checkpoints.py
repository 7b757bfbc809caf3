"""Customized T2I uploads: detect the format from the keys, validate, load into copies of the base.

Formats (safetensors only; nothing is ever unpickled):
  * ``lora``: diffusers/peft keys (``unet.…lora_A.weight``) or kohya/A1111 keys (``lora_unet_…lora_down.weight``),
    loaded with diffusers' ``load_lora_weights`` and fused into the weights.
  * ``unet``: a full UNet state dict in diffusers key layout.
  * ``ldm``: a single-file SD 1.5 checkpoint in the original LDM layout (``model.diffusion_model.…``),
    converted by ``UNet2DConditionModel.from_single_file`` with the base's local UNet config.

Which key means what is `common.checkpoint_rules`, the table the API's upload check reads too.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from common.checkpoint_rules import LDM_UNET_PREFIX, ldm_stray_keys, ldm_text_encoder_keys, upload_format
from engine.errors import CheckpointError
from engine.models import place


def file_sha256(path: Path) -> str:
    """Content hash of a file, streamed (hashlib reads it in chunks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_keys(path: Path) -> list[str]:
    """Keys of a safetensors file, from its header only; anything else is a `CheckpointError`."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint is not a valid safetensors file: {exc}", field="checkpoint") from exc


def detect_format(keys: list[str]) -> str:
    """Return "lora", "ldm" or "unet" from the key names alone."""
    if not keys:
        raise CheckpointError("checkpoint holds no tensors", field="checkpoint")
    return upload_format(keys)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load every tensor (CPU) and reject NaN/Inf values, naming the first bad key."""
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint is not a valid safetensors file: {exc}", field="checkpoint") from exc
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"tensor {key!r} contains NaN or Inf values", field="checkpoint")
    return tensors


def _check_against(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise CheckpointError(f"{what}: {len(unknown)} unknown keys for this base, e.g. {unknown[:3]}", field="checkpoint")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{what}: {len(missing)} keys missing, e.g. {missing[:3]}", field="checkpoint")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{what}: tensor {key!r} has shape {tuple(tensor.shape)}, the base expects "
                f"{tuple(expected[key].shape)}",
                field="checkpoint",
            )


def _load_unet_dict(unet: UNet2DConditionModel, tensors: dict[str, torch.Tensor]) -> None:
    _check_against(tensors, unet.state_dict(), "UNet checkpoint")
    unet.load_state_dict(tensors, strict=True)


def _load_ldm(unet: UNet2DConditionModel, text_encoder, tensors: dict, unet_config_dir: Path) -> None:
    stray = ldm_stray_keys(tensors)
    if stray:
        raise CheckpointError(f"single-file checkpoint: unknown keys {stray[:3]}", field="checkpoint")
    unet_part = {k: v for k, v in tensors.items() if k.startswith(LDM_UNET_PREFIX)}
    try:
        converted = UNet2DConditionModel.from_single_file(
            unet_part, config=str(unet_config_dir), local_files_only=True, torch_dtype=torch.float32
        )
    except (KeyError, IndexError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"single-file checkpoint does not fit the base UNet: {exc}", field="checkpoint") from exc
    _load_unet_dict(unet, converted.state_dict())
    expected = text_encoder.state_dict()
    text_keys = ldm_text_encoder_keys(tensors, expected)
    if text_keys:
        text_state = {name: tensors[key] for key, name in text_keys.items()}
        _check_against(text_state, expected, "single-file text encoder")
        text_encoder.load_state_dict(text_state, strict=True)


def _load_lora(unet, text_encoder, tokenizer, scheduler, vae, tensors: dict) -> None:
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    try:
        pipe.load_lora_weights(dict(tensors), adapter_name="customization")
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"LoRA does not fit the base model: {exc}", field="checkpoint") from exc
    pipe.fuse_lora(adapter_names=["customization"], lora_scale=1.0)
    pipe.unload_lora_weights()
    changed = any(not torch.equal(before[k], v) for k, v in unet.state_dict().items() if k in before)
    if not changed and not any("te" in k or "text" in k for k in tensors):
        raise CheckpointError("LoRA matched no module of the base UNet", field="checkpoint")


def load_customized_t2i(components: dict, path: Path, unet_config_dir: Path) -> tuple[str, dict]:
    """Return (format, components) where unet/text_encoder are customized copies of the base ones.

    Args:
        components: the base T2I components (``unet``, ``text_encoder``, ``vae``, ``tokenizer``,
            ``scheduler``); never modified.
        path: the uploaded ``.safetensors`` file.
        unet_config_dir: a local directory holding the base UNet's ``config.json``.
    """
    fmt = detect_format(read_keys(path))
    tensors = load_tensors(path)
    device, dtype = components["unet"].device, components["unet"].dtype
    unet = place(copy.deepcopy(components["unet"]), torch.device("cpu"), torch.float32)
    text_encoder = place(copy.deepcopy(components["text_encoder"]), torch.device("cpu"), torch.float32)
    if fmt == "unet":
        _load_unet_dict(unet, tensors)
    elif fmt == "ldm":
        _load_ldm(unet, text_encoder, tensors, unet_config_dir)
    else:
        vae = components["vae"]
        _load_lora(unet, text_encoder, components["tokenizer"], components["scheduler"], vae, tensors)
    customized = dict(components)
    customized["unet"] = place(unet, device, dtype).eval()
    customized["text_encoder"] = place(text_encoder, device, dtype).eval()
    return fmt, customized
