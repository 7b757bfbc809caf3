"""AnimateDiff's motion LoRAs (camera motions: zoom, pan, tilt, roll): LoRAs on the motion modules only, loaded
with diffusers' LoRA loader, orthogonal to Still-Moving's Spatial Adapters.

The file layout is the hub's (``guoyww/animatediff-motion-lora-*``, converted by diffusers'
``scripts/convert_animatediff_motion_lora_to_diffusers.py``): a directory with one
``diffusion_pytorch_model.safetensors`` whose keys are diffusers' old attention-processor LoRA names under
``unet.``, e.g. ``unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight``,
no alphas (scale 1: ``W + up @ down``). `save_motion_lora` writes peft LoRA weights in that layout.

A loaded LoRA stays attached to the UNet it was loaded into, under its own adapter name; sampling sets the
request's adapters every time (`activation`), so a LoRA a request used is inactive in the next one. The base
method samples with LoRAs through `lora_unet`, a copy of the base's sampling UNet sharing its weights: the
shared one stays plain (training copies it).
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AnimateDiffPipeline
from safetensors.torch import save_file

from engine.errors import ModelLoadError, SpecError
from engine.models import BaseModels

WEIGHT_NAME = "diffusion_pytorch_model.safetensors"  # the hub repos' one file
PREFIX = "unet."
# peft names -> the hub's: `<attn>.to_q.lora_A.weight` -> `<attn>.processor.to_q_lora.down.weight`
_PEFT_KEY = re.compile(r"^(.*\.motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12])\.(to_q|to_k|to_v|to_out)"
                       r"(?:\.0)?\.lora_([AB])\.weight$")


@dataclass(frozen=True)
class MotionLora:
    """A motion LoRA read from `source` (hub id or local directory): its tensors, kept by the worker's cache."""

    source: str
    state_dict: dict

    @property
    def adapter_name(self) -> str:
        """A peft adapter name per source (no dots: module-dict keys): its last path part and a digest."""
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(self.source).name)[-40:]
        return f"mlora-{stem}-{hashlib.sha256(self.source.encode()).hexdigest()[:6]}"


def read_motion_lora(base: BaseModels, source: str) -> MotionLora:
    """The LoRA tensors at `source` through diffusers' `lora_state_dict` (hub download or local directory, the
    one safetensors file found there); `ModelLoadError` when there are none or they touch more than motion modules."""
    spec = base.spec
    try:
        state_dict, _alphas = AnimateDiffPipeline.lora_state_dict(
            source, cache_dir=spec.cache_dir, local_files_only=spec.local_files_only)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load motion_lora={source!r}: {exc}") from exc
    if not state_dict:
        raise ModelLoadError(f"motion_lora={source!r} holds no LoRA tensors")
    outside = [k for k in state_dict if ".motion_modules." not in k]
    if outside:
        raise ModelLoadError(f"motion_lora={source!r} is not a motion LoRA: it has keys outside the motion modules, "
                             f"e.g. {outside[:2]}")
    return MotionLora(source, dict(state_dict))


def for_sample(base: BaseModels, sample, loaded: MotionLora | None) -> MotionLora | None:
    """The motion LoRA a `SampleSpec` names: `loaded` when it is that one, else read now; None without one."""
    if sample.motion_lora is None:
        if loaded is not None:
            raise SpecError(f"a motion LoRA ({loaded.source!r}) was passed for a sample that names none",
                            field="motion_lora")
        return None
    if loaded is None:
        return read_motion_lora(base, sample.motion_lora)
    if loaded.source != sample.motion_lora:
        raise SpecError(f"motion_lora={sample.motion_lora!r} but the LoRA passed is {loaded.source!r}",
                        field="motion_lora")
    return loaded


def lora_unet(base: BaseModels):
    """The base's sampling UNet as a separate module tree sharing its parameters and buffers (no second copy of
    the weights), built once: motion LoRAs of base-method videos attach here, never to the shared UNet."""
    if "motion_loras" not in base._motion_unet_cache:
        shared = base.sampling_motion_unet()
        memo = {id(t): t for t in (*shared.parameters(), *shared.buffers())}
        base._motion_unet_cache["motion_loras"] = copy.deepcopy(shared, memo)
    return base._motion_unet_cache["motion_loras"]


def attach(components: dict, unet, lora: MotionLora) -> str:
    """Load `lora` into `unet` with diffusers' `load_lora_weights` (once per UNet); return its adapter name.

    `SpecError` naming ``motion_lora`` when it does not fit this UNet's motion modules (another architecture)."""
    name = lora.adapter_name
    if name in (getattr(unet, "peft_config", None) or {}):
        return name
    pipe = AnimateDiffPipeline(vae=components["vae"], text_encoder=components["text_encoder"],
                               tokenizer=components["tokenizer"], unet=unet, motion_adapter=None,
                               scheduler=components["scheduler"])
    tensors = {k: v.to(unet.device, unet.dtype) for k, v in lora.state_dict.items()}
    try:
        pipe.load_lora_weights(tensors, adapter_name=name)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        if name in (getattr(unet, "peft_config", None) or {}):
            unet.delete_adapters(name)
        raise SpecError(f"motion_lora={lora.source!r} does not fit this model's motion modules: {exc}",
                        field="motion_lora") from exc
    return name


def save_motion_lora(peft_state: dict[str, torch.Tensor], directory: Path) -> Path:
    """Write peft LoRA tensors of the motion modules (`adapters.adapter_state`) in the hub's layout."""
    out = {}
    for key, tensor in peft_state.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ValueError(f"{key!r} is not a LoRA weight of a motion module's attention projection")
        attn, proj, which = match.groups()
        out[f"{PREFIX}{attn}.processor.{proj}_lora.{'down' if which == 'A' else 'up'}.weight"] = \
            tensor.detach().to("cpu", torch.float32).contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    save_file(out, str(directory / WEIGHT_NAME))
    return directory / WEIGHT_NAME
