"""Tiny-preset fixtures shared by the benchmarks: a base, a customized checkpoint, a quick customization,
the prompts, the video-size arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

import engine

PROMPTS = ("a photo of sks dog", "sks dog on a beach")
# A deliberately short customization, used where a benchmark only needs *a* trained spatial adapter.
QUICK_TRAIN = engine.TrainSpec(prompts=PROMPTS, num_images=2, train_steps=4, rank=4, preview=False,
                               motion=engine.MotionAdapterSpec(train_steps=4, num_images=2))


def add_video_size_args(parser: argparse.ArgumentParser, steps: bool = False) -> None:
    """``--frames``, ``--size`` (and ``--steps``); absent means the tiny preset's default."""
    parser.add_argument("--frames", type=int, help="default: the tiny preset's")
    parser.add_argument("--size", type=int, help="default: the tiny preset's")
    if steps:
        parser.add_argument("--steps", type=int, help="default: the tiny preset's")


def tiny_base(workdir: Path) -> engine.BaseModels:
    return engine.load_base_models(engine.ModelSpec(preset="tiny"), Path(workdir) / "models")


def tiny_checkpoint(workdir: Path, fmt: str = "lora") -> Path:
    return engine.make_tiny_checkpoint(fmt, Path(workdir) / f"tiny-{fmt}.safetensors")


def quick_customization(base: engine.BaseModels, workdir: Path, checkpoint: Path,
                        train: engine.TrainSpec = QUICK_TRAIN) -> Path:
    """Run a short customization; return its artifact directory."""
    out = Path(workdir) / "customization"
    engine.customize(base, checkpoint, train, out, Path(workdir) / "motion-cache")
    return out
