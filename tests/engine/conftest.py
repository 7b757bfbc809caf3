"""Engine fixtures: the tiny base (built once), tiny checkpoints in every upload format, small specs."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import engine
from engine import MotionAdapterSpec, TrainSpec

warnings.filterwarnings("ignore", message="Already found a `peft_config`")


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> engine.BaseModels:
    return engine.load_base_models(engine.ModelSpec(preset="tiny"), tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny customized checkpoint per upload format."""
    d = tmp_path_factory.mktemp("checkpoints")
    return {fmt: engine.make_tiny_checkpoint(fmt, d / f"{fmt}.safetensors") for fmt in
            ("lora", "lora-kohya", "unet", "ldm")}


def small_train(**overrides) -> TrainSpec:
    """A customization that runs in about a second on the tiny base."""
    values = dict(prompts=("a sks toy", "a sks toy on a table"), num_images=2, train_steps=4, rank=4,
                  learning_rate=1e-3, seed=0, num_frames=4, height=32, width=32, checkpoint_every=0,
                  preview=False, motion=MotionAdapterSpec(train_steps=3, num_images=2, rank=4),
                  motion_adapter_source="shared")  # the cached one: tests load it by its key
    values.update(overrides)
    return TrainSpec(**values)


@pytest.fixture(scope="session")
def trained(base, checkpoints, tmp_path_factory):
    """A finished customization (with preview) on the LoRA checkpoint: (manifest, out_dir, motion cache)."""
    root = tmp_path_factory.mktemp("trained")
    manifest = engine.customize(base, checkpoints["lora"], small_train(preview=True), root / "cust", root / "motion")
    return manifest, root / "cust", root / "motion"


def unet_inputs(unet, frames: int = 4, size: int = 16, seed: int = 0):
    """Seeded (sample, timestep, text) for a UNetMotionModel forward at latent size `size`."""
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, frames, size, size, generator=gen)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen).repeat_interleave(frames, dim=0)
    return sample, torch.tensor([500]), text


@torch.no_grad()
def forward(unet, inputs) -> torch.Tensor:
    sample, t, text = inputs
    return unet(sample, t, encoder_hidden_states=text).sample
