"""One training loop for both adapters: epsilon-prediction MSE on frozen videos, only LoRA tensors learn.

Randomness is drawn from a generator seeded by (seed, step), so a run resumed from a saved state
continues exactly as an uninterrupted one would. A state is saved every `checkpoint_every` steps, and at
once when the caller suspends the run (`engine.SuspendedError`: its worker is shutting down).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from engine import adapters
from engine.errors import SuspendedError
from engine.progress import Reporter

STATE_TENSORS = "adapter_state.safetensors"
STATE_OPTIMIZER = "optimizer.pt"
STATE_META = "state.json"


@dataclass
class TrainData:
    """Frozen-video latents (N, C, F, h, w) and their text embeddings (N, seq, dim).

    `prior` (optional): frozen videos of base-T2I samples trained alongside at weight `prior_weight` (prior
    preservation, DreamBooth's form): loss = mse(data) + prior_weight * mse(prior)."""

    latents: torch.Tensor
    embeddings: torch.Tensor
    prior: "TrainData | None" = None
    prior_weight: float = 0.0


@dataclass
class TrainResult:
    """Per-step losses (the loss curve) and the step training resumed from (0 if fresh)."""

    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + step)


def _autocast(device: torch.device, dtype: torch.dtype):
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def save_state(state_dir: Path, unet, name: str, optimizer, step: int, losses: list[float]) -> None:
    """Write adapter tensors, optimizer state and step; the meta file last, so a state is whole or absent."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_META).unlink(missing_ok=True)
    save_file(adapters.adapter_state(unet, name), str(state_dir / STATE_TENSORS))
    torch.save(optimizer.state_dict(), state_dir / STATE_OPTIMIZER)
    (state_dir / STATE_META).write_text(json.dumps({"adapter": name, "step": step, "losses": losses}))


def _checkpoint(state_dir: Path, unet, name: str, optimizer, step: int, losses: list[float],
                on_checkpoint: Callable[[Path], None] | None) -> None:
    save_state(state_dir, unet, name, optimizer, step, losses)
    if on_checkpoint is not None:
        on_checkpoint(state_dir)


def load_state(state_dir: Path | None, unet, name: str, optimizer) -> tuple[int, list[float]]:
    """Restore a state written by `save_state` for adapter `name`; (0, []) when there is none."""
    if state_dir is None or not (state_dir / STATE_META).exists():
        return 0, []
    meta = json.loads((state_dir / STATE_META).read_text())
    if meta.get("adapter") != name:
        return 0, []
    from peft.utils import set_peft_model_state_dict

    set_peft_model_state_dict(unet, load_file(str(state_dir / STATE_TENSORS)), adapter_name=name)
    optimizer.load_state_dict(torch.load(state_dir / STATE_OPTIMIZER, map_location="cpu", weights_only=True))
    return int(meta["step"]), list(meta["losses"])


def _epsilon_loss(unet, data: TrainData, noise_scheduler, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """Epsilon-prediction MSE on `batch_size` random videos of `data` (rows, noise, timesteps drawn from `gen`)."""
    device, dtype = unet.device, unet.dtype
    num, _, num_frames = data.latents.shape[:3]
    idx = torch.randint(0, num, (batch_size,), generator=gen)
    x0 = data.latents[idx].to(device, torch.float32)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
    noisy = noise_scheduler.add_noise(x0, noise, t).to(dtype)
    text = data.embeddings[idx].to(device, dtype).repeat_interleave(num_frames, dim=0)
    with _autocast(device, dtype):
        pred = unet(noisy, t, encoder_hidden_states=text).sample
    return F.mse_loss(pred.float(), noise.float())


def train_adapter(
    unet,
    name: str,
    data: TrainData,
    noise_scheduler,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    reporter: Reporter,
    stage: str,
    state_dir: Path | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train adapter `name` of `unet` (other adapters stay as they are, frozen) for `steps` steps."""
    params = adapters.trainable_only(unet, name)
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    start, losses = load_state(state_dir, unet, name, optimizer)
    result = TrainResult(losses=losses, resumed_from=start)
    unet.train()
    for step in range(start, steps):
        gen = _step_generator(seed, step)
        loss = _epsilon_loss(unet, data, noise_scheduler, batch_size, gen)
        if data.prior is not None and data.prior_weight:
            loss = loss + data.prior_weight * _epsilon_loss(unet, data.prior, noise_scheduler, batch_size, gen)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(loss.detach()))
        done = step + 1
        periodic = state_dir is not None and checkpoint_every and done % checkpoint_every == 0 and done < steps
        if periodic:
            _checkpoint(state_dir, unet, name, optimizer, done, result.losses, on_checkpoint)
        reporter.loss(stage, done, steps, result.losses[-1])
        try:
            reporter.step(stage, done, steps)
        except SuspendedError:  # asked to stop for good (its worker shuts down): this step's state first
            if state_dir is None:
                raise
            if not periodic:
                _checkpoint(state_dir, unet, name, optimizer, done, result.losses, on_checkpoint)
            raise SuspendedError(f"suspended at {stage} step {done}/{steps}, its resume state saved") from None
    unet.eval()
    adapters.trainable_only(unet, "__none__")
    return result
