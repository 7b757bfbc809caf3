"""Benchmark 7b: estimated peak memory of one real-size training step at 16 x 512 x 512 in half precision,
without a GPU: torch's `MemTracker` (torch.distributed._tools.mem_tracker) on meta-device tensors.

An estimate, not a measurement: every op runs on the meta device (shapes only), the tracker adds up
the bytes of live tensors by kind (parameters, activations saved for backward, temporaries, gradients)
and keeps the peak. Attention is routed to `aten._scaled_dot_product_efficient_attention` (the GPU's
memory-efficient kernel, O(sequence) memory) since SDPA on meta would otherwise decompose into the math
path and materialise the attention matrix. Allocator fragmentation and CUDA context (~0.5 GiB) are not
included. The model is the engine's training model: AnimateDiff UNet + Motion Adapter LoRA (frozen) +
Spatial Adapter LoRA (trained, fp32 weights), batch 1 frozen video.

Variants: gradient checkpointing as diffusers does it (`enable_gradient_checkpointing`: resnets and
spatial transformer blocks; the engine's `ModelSpec(gradient_checkpointing=True)`), that plus the
motion modules (`AnimateDiffTransformer3D`) wrapped in `torch.utils.checkpoint` (not done by diffusers
or the engine today), and none. Reference: a 24 GiB card (issue 5: "within 24 GB").
Also listed: the weights the engine keeps resident during a customization (base + customized copies,
and the base's cached sampling UNet once something has built it), added to the step's peak.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from bench.harness import quiet, report
from bench.real_size import attach_training_adapters, meta_motion_unet
from engine import real_size

BUDGET_GIB = 24.0
VARIANTS = ("diffusers-ckpt", "diffusers-ckpt+motion-ckpt", "no-ckpt")


class _NoHandle:
    def remove(self) -> None:
        pass


def _frozen_params_tolerated() -> None:
    """MemTracker hooks every parameter's gradient; frozen base weights have none: skip them."""
    for name in ("register_hook", "register_post_accumulate_grad_hook"):
        original = getattr(torch.Tensor, name)

        def safe(self, hook, _original=original):
            return _original(self, hook) if self.requires_grad else _NoHandle()

        setattr(torch.Tensor, name, safe)


def _efficient_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    assert attn_mask is None and not is_causal and dropout_p == 0.0
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, None, True, scale=scale)[0]


def _checkpoint_motion_modules(unet) -> int:
    count = 0
    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            forward = module.forward
            module.forward = lambda *a, _f=forward, **k: checkpoint.checkpoint(_f, *a, use_reentrant=False, **k)
            count += 1
    return count


def estimate(variant: str, frames: int, size: int, dtype: torch.dtype, rank: int) -> dict:
    from torch.distributed._tools.mem_tracker import MemTracker

    unet = meta_motion_unet(real_size.build_sd15(meta=True), dtype)
    unet.requires_grad_(False)
    if variant != "no-ckpt":
        unet.enable_gradient_checkpointing()
    if variant.endswith("motion-ckpt"):
        _checkpoint_motion_modules(unet)
    params = attach_training_adapters(unet, rank)
    h = size // 8
    x = torch.randn(1, 4, frames, h, h, device="meta", dtype=dtype)
    text = torch.randn(frames, 77, 768, device="meta", dtype=dtype)
    noise = torch.randn(1, 4, frames, h, h, device="meta")
    tracker = MemTracker()
    tracker.track_external(x, text, noise)
    unet.train()
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = _efficient_sdpa
    try:
        with tracker:
            pred = unet(x, torch.tensor([500], device="meta"), encoder_hidden_states=text).sample
            F.mse_loss(pred.float(), noise).backward()
    finally:
        F.scaled_dot_product_attention = sdpa
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    by_kind = {str(getattr(k, "value", k)): v / 2**30 for k, v in peak.items()}
    lora_params = sum(p.numel() for p in params)
    weights = sum(p.numel() * p.element_size() for p in unet.parameters()) / 2**30
    adamw = 2 * lora_params * 4 / 2**30  # exp_avg + exp_avg_sq in fp32
    activations = by_kind.get("Activation", 0.0) + by_kind.get("Temp", 0.0) + by_kind.get("Gradient", 0.0)
    return {"variant": variant, "weights_GiB": weights, "activations_GiB": by_kind.get("Activation", 0.0),
            "temp_GiB": by_kind.get("Temp", 0.0), "grads+adamw_GiB": by_kind.get("Gradient", 0.0) + adamw,
            "step_peak_GiB": weights + activations + adamw, "trainable_M": lora_params / 1e6}


def resident_weights(dtype: torch.dtype) -> dict:
    """GiB of the modules the engine holds during a customization (base models + customized copies)."""
    meta = real_size.build_sd15(meta=True)
    size = {name: sum(p.numel() for p in module.parameters()) * torch.finfo(dtype).bits / 8 / 2**30
            for name, module in meta.items()}
    motion_unet = size["unet"] + size["motion_adapter"]
    return {"base unet2d": size["unet"], "base vae": size["vae"], "base text_encoder": size["text_encoder"],
            "base motion_adapter": size["motion_adapter"], "customized unet2d copy": size["unet"],
            "customized text_encoder copy": size["text_encoder"], "training UNetMotionModel": motion_unet,
            "base sampling UNetMotionModel (BaseModels cache, once built)": motion_unet}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="from: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    quiet()
    _frozen_params_tolerated()
    dtype = getattr(torch, args.dtype)
    rows = []
    for variant in args.variants.split(","):
        start = time.perf_counter()
        row = estimate(variant, args.frames, args.size, dtype, args.rank)
        rows.append(row)
        print(f"{variant}: {row['step_peak_GiB']:.2f} GiB ({time.perf_counter() - start:.0f} s to estimate)",
              flush=True)
    resident = resident_weights(dtype)
    others = sum(v for k, v in resident.items() if k != "training UNetMotionModel")
    for row in rows:  # the step's own weights are in step_peak; add what else the engine keeps resident
        row["with_engine_resident_GiB"] = row["step_peak_GiB"] + others
        row["ratio_to_24GiB"] = row["with_engine_resident_GiB"] / BUDGET_GIB
        row["within_24GiB"] = row["ratio_to_24GiB"] <= 1.0
    report("train_memory", rows, {
        "config": {"frames": args.frames, "size": args.size, "dtype": args.dtype, "rank": args.rank, "batch": 1,
                   "attention": "aten._scaled_dot_product_efficient_attention (meta)"},
        "method": "torch.distributed._tools.mem_tracker.MemTracker over meta-device tensors; peak of live "
                  "parameters + activations + temporaries + gradients, + AdamW state (2 x fp32 per LoRA "
                  "parameter); no allocator fragmentation, no CUDA context",
        "engine_resident_weights_GiB": resident, "engine_resident_total_GiB": sum(resident.values()),
        "target": f"training step at {args.frames}x{args.size}x{args.size} within {BUDGET_GIB:.0f} GiB",
        "met": {row["variant"]: row["within_24GiB"] for row in rows},
    })


if __name__ == "__main__":
    main()
