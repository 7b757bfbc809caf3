"""Benchmark 2: one spatial-adapter training step of ours against a minimal plain-peft reference loop.

Both sides train the same model (AnimateDiff UNet with the customized spatial weights, the Motion
Adapter active and frozen, a rank-r spatial LoRA) on the same frozen-video batch in the same precision:
  * ours: `engine.training.train_adapter` (per-step times from its progress callback);
  * reference: LoRA injected with `peft.inject_adapter_in_model`, a 10-line loop (noise, add_noise,
    forward, MSE, backward, AdamW step, zero_grad), the same random draws.
Their loss curves over the first steps are asserted equal (same model, batch, precision, randomness).
The runs are interleaved in chunks; the first step of each chunk (which includes optimizer set-up) is
reported apart from the steady per-step median. Also checked: frozen-video latents are computed once
per image (VAE encoder calls = images, not images x frames) and text embeddings once per unique
prompt, with no VAE or text-encoder call inside the training loop.
Target (issue 5): ours / reference <= 1.10.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import set_peft_model_state_dict

import engine
from bench.harness import quiet, report, sync
from bench.tiny import PROMPTS, add_video_size_args, tiny_checkpoint
from engine import adapters, frozen_videos
from engine.checkpoints import load_customized_t2i
from engine.models import build_motion_unet, make_training_scheduler
from engine.motion_adapter import ensure_motion_adapter
from engine.progress import Reporter
from engine.training import TrainData, train_adapter

TARGET = 1.10


class CallCounter:
    """Counts forward calls of a module (a forward hook)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def reference_model(unet_template, motion_path: Path, spatial_config, seed: int, lora_dtype=torch.float32):
    """A copy of the model with both LoRAs injected by plain peft; the spatial one trainable."""
    unet = copy.deepcopy(unet_template)
    state, motion_config = adapters.read_adapter(motion_path)
    inject_adapter_in_model(motion_config, unet, adapter_name="motion")
    set_peft_model_state_dict(unet, state, adapter_name="motion")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same LoRA A init as ours
        inject_adapter_in_model(spatial_config, unet, adapter_name="spatial")
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter(["motion", "spatial"])
    params = []
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.to(lora_dtype)
        param.requires_grad_(".spatial." in name and "lora_" in name)
        if param.requires_grad:
            params.append(param)
    return unet, params


def reference_loop(unet, params, data: TrainData, scheduler, steps: int, lr: float, batch: int, seed: int,
                   first_step: int = 0) -> tuple[list[float], list[float]]:
    """The minimal loop. Returns (losses, per-step seconds; the first includes optimizer set-up)."""
    start = time.perf_counter()
    optimizer = torch.optim.AdamW(params, lr=lr)
    device, dtype = unet.device, unet.dtype
    autocast = torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda" and dtype != torch.float32)
    frames = data.latents.shape[2]
    losses, times = [], []
    unet.train()
    for step in range(first_step, first_step + steps):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, data.latents.shape[0], (batch,), generator=gen)
        x0 = data.latents[idx].to(device, torch.float32)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen).to(device)
        noisy = scheduler.add_noise(x0, noise, t).to(dtype)
        text = data.embeddings[idx].to(device, dtype).repeat_interleave(frames, dim=0)
        with autocast:
            pred = unet(noisy, t, encoder_hidden_states=text).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        now = time.perf_counter()
        times.append(now - start)
        start = now
    return losses, times


def ours_loop(unet, data: TrainData, scheduler, steps: int, lr: float, batch: int, seed: int):
    """`train_adapter`, with per-step seconds taken from its progress callback."""
    stamps = []
    start = time.perf_counter()
    result = train_adapter(unet, adapters.SPATIAL, data, scheduler, steps, lr, batch, seed,
                           Reporter(progress=lambda *a: stamps.append(time.perf_counter())), stage="train")
    return result.losses, [b - a for a, b in zip([start] + stamps[:-1], stamps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_size_args(parser)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--chunks", type=int, default=6, help="interleaved chunks per side")
    parser.add_argument("--chunk-steps", type=int, default=8)
    parser.add_argument("--check-steps", type=int, default=5, help="steps whose losses must match")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    quiet()
    work = Path(tempfile.mkdtemp(prefix="bench-training-"))
    base = engine.load_base_models(engine.ModelSpec(preset="tiny", device=args.device, precision=args.precision),
                                   work / "models")
    d = base.defaults
    frames, size = d.fill(num_frames=args.frames, height=args.size).values()
    train = engine.TrainSpec(prompts=PROMPTS, num_images=4, rank=args.rank,
                             num_frames=frames, height=size, width=size, batch_size=args.batch,
                             motion=engine.MotionAdapterSpec(train_steps=2, num_images=2))
    motion_path, _ = ensure_motion_adapter(base, train, work / "motion-cache", Reporter())
    _, components = load_customized_t2i(base.components, tiny_checkpoint(work), base.unet_config_dir)

    stills = frozen_videos.sample_stills(components, train.prompts, train.num_images, 0, size, size,
                                         d.image_steps, 7.5, "", Reporter())
    vae_calls, text_calls = CallCounter(components["vae"].encoder), CallCounter(components["text_encoder"])
    data = TrainData(latents=frozen_videos.freeze(frozen_videos.encode_images(components["vae"], stills.images),
                                                  frames),
                     embeddings=frozen_videos.encode_prompts(components, stills.prompts))
    prep_calls = {"vae_encoder_calls": vae_calls.calls, "text_encoder_calls": text_calls.calls,
                  "images": len(stills.images), "frames": frames, "unique_prompts": len(set(stills.prompts))}

    template = build_motion_unet(base, components["unet"])
    config = adapters.spatial_lora_config(args.rank)
    ours = copy.deepcopy(template)
    adapters.load_adapter(ours, adapters.MOTION, motion_path)
    adapters.add_adapter(ours, adapters.SPATIAL, config, seed=train.seed)
    adapters.activate(ours, [adapters.MOTION, adapters.SPATIAL])
    ref, ref_params = reference_model(template, motion_path, config, train.seed)
    scheduler = make_training_scheduler(base)
    lr, batch, seed = train.learning_rate, args.batch, train.seed

    vae_calls.calls = text_calls.calls = 0
    ours_losses, _ = ours_loop(ours, data, scheduler, args.check_steps, lr, batch, seed)
    ref_losses, _ = reference_loop(ref, ref_params, data, scheduler, args.check_steps, lr, batch, seed)
    train_calls = {"vae_encoder_calls": vae_calls.calls, "text_encoder_calls": text_calls.calls}
    max_loss_diff = max(abs(a - b) for a, b in zip(ours_losses, ref_losses))
    assert max_loss_diff <= 1e-6 * max(1.0, max(ref_losses)), f"loss curves differ: {ours_losses} {ref_losses}"
    assert train_calls == {"vae_encoder_calls": 0, "text_encoder_calls": 0}, train_calls
    assert prep_calls["vae_encoder_calls"] == prep_calls["images"], prep_calls
    assert prep_calls["text_encoder_calls"] == prep_calls["unique_prompts"], prep_calls

    steady = {"ours": [], "reference": []}
    first = {"ours": [], "reference": []}
    for chunk in range(args.chunks):
        order = ("ours", "reference") if chunk % 2 == 0 else ("reference", "ours")
        for side in order:
            sync(base.device)
            if side == "ours":
                _, times = ours_loop(ours, data, scheduler, args.chunk_steps, lr, batch, seed)
            else:
                _, times = reference_loop(ref, ref_params, data, scheduler, args.chunk_steps, lr, batch, seed)
            first[side].append(times[0])
            steady[side].extend(times[1:])
    med = {k: statistics.median(v) for k, v in steady.items()}
    med_first = {k: statistics.median(v) for k, v in first.items()}
    ratio = med["ours"] / med["reference"]
    rows = [
        {"what": "reference (plain peft loop)", "step_s": med["reference"], "first_step_s": med_first["reference"],
         "ratio": 1.0},
        {"what": "ours (train_adapter)", "step_s": med["ours"], "first_step_s": med_first["ours"], "ratio": ratio},
    ]
    report("training", rows, {
        "config": {"preset": "tiny", "frames": frames, "size": size, "batch": batch, "rank": args.rank,
                   "device": str(base.device), "dtype": str(base.dtype), "chunks": args.chunks,
                   "chunk_steps": args.chunk_steps, "steps_per_side": len(steady["ours"])},
        "loss_curves_equal": {"steps": args.check_steps, "max_abs_diff": max_loss_diff, "ours": ours_losses,
                              "reference": ref_losses},
        "data_prep_calls": prep_calls, "calls_during_training": train_calls,
        "step_times": {k: [round(x, 5) for x in v] for k, v in steady.items()},
        "target": f"ours/reference per step <= {TARGET}", "met": ratio <= TARGET,
    }, device=base.device)


if __name__ == "__main__":
    main()
