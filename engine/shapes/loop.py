"""What the shapes trainers share: seeded AdamW with warmup + cosine decay, an EMA copy, timed logging."""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F


def optimizer(params, lr: float, steps: int, warmup: int = 100, weight_decay: float = 0.0):
    """AdamW and a LambdaLR: linear warmup then cosine decay to 10% of `lr`."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def epsilon_loss(model, latents: torch.Tensor, condition, noise_scheduler, batch: int,
                 gen: torch.Generator, t_min: int = 0) -> torch.Tensor:
    """Epsilon-prediction MSE on a random batch of `latents` (drawn in this order from `gen`: rows, noise,
    timesteps in [t_min, T)); `condition(rows)` gives the text embeddings for those rows.

    A `t_min` trains only the noisy steps, where a video's motion is decided (its layout over the frames): at
    lower noise the noisy video itself shows which way the object goes, and at uniform timesteps those steps
    drown the motion signal (docs/shapes-world.md)."""
    idx = torch.randint(0, len(latents), (batch,), generator=gen)
    x0 = latents[idx]
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(t_min, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
    pred = model(noise_scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=condition(idx)).sample
    return F.mse_loss(pred, noise)


def update(opt, sched, loss: torch.Tensor, clip: list | None = None) -> None:
    """One optimizer step on `loss` (gradient norm clipped to 1 over `clip` when given)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, 1.0)
    opt.step()
    sched.step()


class EMA:
    """Exponential moving average of a module's parameters (what is saved: smoother than the last step)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for mine, theirs in zip(self.module.parameters(), module.parameters()):
            mine.lerp_(theirs.detach(), 1 - decay)


class Log:
    """Prints a line every `every` steps with the running mean loss and the elapsed time."""

    def __init__(self, name: str, steps: int, every: int = 100):
        self.name, self.steps, self.every = name, steps, every
        self.start, self.window, self.curve = time.time(), [], []

    def __call__(self, step: int, loss: float, extra: str = "") -> None:
        self.window.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            mean = sum(self.window) / len(self.window)
            self.curve.append(round(mean, 6))
            self.window = []
            print(f"[{self.name}] step {step + 1}/{self.steps} loss {mean:.5f} {extra}"
                  f"({time.time() - self.start:.0f} s)", flush=True)

    @property
    def seconds(self) -> float:
        return round(time.time() - self.start, 1)
