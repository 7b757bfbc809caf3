"""What the key names of an uploaded checkpoint mean: one table for the API's header check
(`common.checkpoint_header`) and the engine's loader (`engine.checkpoints`), so that an upload the API
accepts is one the engine loads. Pure stdlib: the engine may import it (see the boundary test).

* LoRA: diffusers/peft keys (``unet.…to_q.lora_A.weight``, ``text_encoder.…``; older diffusers
  ``…lora.down.weight``) or kohya/A1111 keys (``lora_unet_…lora_down.weight``, ``lora_te_…``, ``….alpha``).
  No key of a full UNet or of a single-file checkpoint holds one of these markers.
* LDM single file (SD 1.5): the UNet under ``model.diffusion_model.``; the CLIP text encoder under
  ``cond_stage_model.transformer.`` (CompVis/A1111) or ``conditioner.embedders.0.transformer.`` (the
  generative-models layout), loaded too; the VAE (``first_stage_model.``), EMA copies (``model_ema.``), other
  conditioning modules and the noise schedule's buffers are ignored. Any other key is a stray key.
* Otherwise: a diffusers UNet state dict.
"""

from __future__ import annotations

from typing import Iterable

LORA_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora.down", "lora.up", "lora_te", "lora_unet")
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_TEXT_ENCODER_PREFIXES = ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")
LDM_IGNORED_PREFIXES = ("first_stage_model.", "cond_stage_model.", "conditioner.", "model_ema.")
LDM_IGNORED_KEYS = frozenset({
    "alphas_cumprod", "alphas_cumprod_prev", "betas", "logvar", "log_one_minus_alphas_cumprod",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance",
    "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
})
FORMATS = ("lora", "ldm", "unet")


def upload_format(keys: Iterable[str]) -> str:
    """"lora", "ldm" or "unet", from the key names alone (the caller rejects a file without keys)."""
    keys = list(keys)
    if any(marker in key for key in keys for marker in LORA_MARKERS):
        return "lora"
    if any(key.startswith(LDM_UNET_PREFIX) for key in keys):
        return "ldm"
    return "unet"


def ldm_stray_keys(keys: Iterable[str]) -> list[str]:
    """Keys of a single-file checkpoint that are neither its UNet nor a part it may carry and we ignore."""
    return sorted(k for k in keys if not k.startswith((LDM_UNET_PREFIX, *LDM_IGNORED_PREFIXES))
                  and k not in LDM_IGNORED_KEYS)


def ldm_text_encoder_keys(keys: Iterable[str], base_keys: Iterable[str]) -> dict[str, str]:
    """``{single-file key: base text-encoder key}`` for the text-encoder part of a single-file checkpoint.

    Names are matched with or without ``text_model.`` (transformers 5 dropped it); a ``position_ids``
    buffer the base does not hold (older transformers saved it) is left out. A name the base lacks maps to
    itself, for the caller to report."""
    base = {k.removeprefix("text_model."): k for k in base_keys}
    out = {}
    for key in keys:
        prefix = next((p for p in LDM_TEXT_ENCODER_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            continue
        name = key[len(prefix):].removeprefix("text_model.")
        if name in base or not name.endswith("position_ids"):
            out[key] = base.get(name, name)
    return out
