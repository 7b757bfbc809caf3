"""SD 1.5 + AnimateDiff architectures from their real configs (shipped in `engine/configs/sd15/`).

Random or meta-device weights: real-size benchmarks and key manifests without downloading anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

CONFIG_DIR = Path(__file__).parent / "configs" / "sd15"


def load_config(name: str) -> dict:
    """One of unet, vae, text_encoder, motion_adapter, scheduler (without private `_` keys)."""
    raw = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_") and k != "architectures"}


def build_sd15(device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0, meta: bool = False) -> dict:
    """Random-weight SD 1.5 UNet, VAE, text encoder and AnimateDiff motion adapter at real size."""
    if meta:
        from accelerate import init_empty_weights

        with init_empty_weights():
            return _build()
    torch.manual_seed(seed)
    modules = _build()
    return {k: v.to(device, dtype) for k, v in modules.items()}


def _build() -> dict:
    text_cfg = load_config("text_encoder")
    text_cfg.pop("model_type", None)
    return {
        "unet": UNet2DConditionModel(**load_config("unet")),
        "vae": AutoencoderKL(**load_config("vae")),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**text_cfg)),
        "motion_adapter": MotionAdapter(**load_config("motion_adapter")),
    }


def key_manifest(components: dict) -> dict:
    """``{"unet": {key: shape}, "text_encoder": {key: shape}}``: what the API validates uploads against."""
    return {name: {k: list(v.shape) for k, v in components[name].state_dict().items()}
            for name in ("unet", "text_encoder")}
