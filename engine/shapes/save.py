"""Saving and loading the shapes world in the real repositories' directory layouts (safetensors only)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from engine.shapes import architecture

TEXT_SEED = 2

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
    "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def base_dir(out: Path) -> Path:
    return Path(out) / "base"


def save_vae(vae: AutoencoderKL, out: Path) -> None:
    vae.save_pretrained(base_dir(out) / "vae", safe_serialization=True)


def save_text_side(out: Path) -> dict:
    """Tokenizer (world words as tokens), a seeded frozen-random text encoder, the scheduler, model_index."""
    root = base_dir(out)
    tok_dir = architecture.write_tokenizer(root / "tokenizer")
    torch.manual_seed(TEXT_SEED)
    config = CLIPTextConfig(**architecture.TEXT_CONFIG, vocab_size=architecture.vocab_size(tok_dir))
    CLIPTextModel(config).eval().save_pretrained(root / "text_encoder", safe_serialization=True)
    DDIMScheduler(**architecture.SCHEDULER_CONFIG).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    return {"text_encoder": "frozen random (seed %d)" % TEXT_SEED, "vocab_size": config.vocab_size}


def save_text_encoder(text_encoder: CLIPTextModel, out: Path) -> None:
    text_encoder.save_pretrained(base_dir(out) / "text_encoder", safe_serialization=True)


def save_unet(unet: UNet2DConditionModel, out: Path) -> None:
    unet.save_pretrained(base_dir(out) / "unet", safe_serialization=True)


def save_motion_adapter(adapter: MotionAdapter, out: Path) -> None:
    adapter.save_pretrained(Path(out) / "motion-adapter", safe_serialization=True)


def save_domain_adapter(lora: dict, out: Path) -> None:
    """A domain adapter (LoRA on the T2I's layers, peft keys) as diffusers LoRA weights that `load_lora_weights`
    reads on the T2I or the T2V."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.save_lora_weights(Path(out) / "domain-adapter", unet_lora_layers=lora,
                                              safe_serialization=True)


def save_judge(judge, out: Path) -> None:
    judge.save(Path(out) / "judge")


def load_judge(out: Path):
    """The judge saved under `out`, or None before it is trained."""
    from engine.shapes.judge import Judge

    return Judge.load(Path(out) / "judge") if (Path(out) / "judge" / "config.json").exists() else None


def load_base(out: Path) -> dict:
    """Whatever of the base pipeline exists so far, by component name (float32, CPU, eval)."""
    root = base_dir(out)
    parts: dict = {}
    if (root / "vae").exists():
        parts["vae"] = AutoencoderKL.from_pretrained(root / "vae").eval()
    if (root / "text_encoder").exists():
        parts["text_encoder"] = CLIPTextModel.from_pretrained(root / "text_encoder").eval()
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(root / "tokenizer")
        parts["scheduler"] = DDIMScheduler.from_pretrained(root / "scheduler")
    if (root / "unet").exists():
        parts["unet"] = UNet2DConditionModel.from_pretrained(root / "unet").eval()
    if (Path(out) / "motion-adapter").exists():
        parts["motion_adapter"] = MotionAdapter.from_pretrained(Path(out) / "motion-adapter").eval()
    return parts
