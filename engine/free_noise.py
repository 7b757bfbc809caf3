"""Videos longer than the motion modules' context, with diffusers' FreeNoise (Qiu et al., 2023).

The motion modules attend within windows of `context_length` frames whose starts are `context_stride` apart,
their outputs fused with pyramid weights; the initial noise of each window is a shuffle of the first one's;
a ``{frame: prompt}`` map is embedded per frame, linearly interpolated between its keys (prompt travel).
The spatial layers see every frame as before, split into chunks of `context_length` frames
(`enable_free_noise_split_inference`), so their peak activations are a window's, not the video's.

diffusers' `enable_free_noise` builds a new FreeNoise block per motion transformer block and loads the old one's
state dict into it: that copies weights inside a UNet shared by every job, and it fails half-way on peft LoRA
layers (the Motion Adapter), leaving the UNet half-converted. `free_noise` instead gives the FreeNoise blocks the
old blocks' own layers (adapters included), wraps the split modules in place, and puts everything back after.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention import BasicTransformerBlock, FreeNoiseTransformerBlock

from common.long_video import LongVideoError, check_prompt_frames, context_window, parse_prompt
from engine.errors import SpecError


class _FreeNoiseBlock(FreeNoiseTransformerBlock):
    """diffusers' FreeNoise block, its last window always ending at the last frame.

    When ``(num_frames - context_length) % context_stride > 1``, diffusers 0.42.1 adds the last window's frames
    past the previous window with their own pyramid weights but counts one weight for all of them, so those
    frames come out scaled by ``w_i / w_0`` (2/3, 1/3 ... of what they should be) at every motion block. With the
    last window in the list itself it is fused like every other (`test_free_noise_fuses_every_frame`)."""

    def _get_frame_indices(self, num_frames: int) -> list[tuple[int, int]]:
        windows = super()._get_frame_indices(num_frames)
        if windows and windows[-1][1] != num_frames:
            windows.append((num_frames - self.context_length, num_frames))
        return windows


def resolve_context(positions: int, num_frames: int, prompt: str | dict[int, str], context_length: int | None,
                    context_stride: int | None) -> dict | None:
    """FreeNoise's ``{"context_length", "context_stride"}`` for a video (`common.long_video.context_window`), or
    None for the plain path; a prompt map is checked against the video's frames."""
    try:
        if isinstance(prompt, dict):
            parse_prompt(prompt)
            check_prompt_frames(prompt, num_frames)
        window = context_window(positions, num_frames, context_length, context_stride, isinstance(prompt, dict))
    except LongVideoError as exc:
        raise SpecError(exc.message, field=exc.field) from None
    return None if window is None else {"context_length": window[0], "context_stride": window[1]}


def _motion_blocks(unet):
    """(module list, index) of every motion transformer block, in the UNet's down, mid and up blocks."""
    for block in _blocks(unet):
        for motion_module in getattr(block, "motion_modules", None) or []:
            for i in range(len(motion_module.transformer_blocks)):
                yield motion_module.transformer_blocks, i


def _blocks(unet) -> list:
    unet = getattr(unet, "_orig_mod", unet)  # a torch.compile wrapper: its module
    return [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]


def _sharing(block: BasicTransformerBlock, length: int, stride: int) -> _FreeNoiseBlock:
    """A FreeNoise block (built on the meta device, so nothing is allocated) holding `block`'s own layers."""
    with torch.device("meta"):
        shell = _FreeNoiseBlock(
            dim=block.dim, num_attention_heads=block.num_attention_heads, attention_head_dim=block.attention_head_dim,
            dropout=block.dropout, cross_attention_dim=block.cross_attention_dim, activation_fn=block.activation_fn,
            attention_bias=block.attention_bias, only_cross_attention=block.only_cross_attention,
            double_self_attention=block.double_self_attention, positional_embeddings=block.positional_embeddings,
            num_positional_embeddings=block.num_positional_embeddings, context_length=length,
            context_stride=stride)
    if set(dict(shell.named_children())) != set(dict(block.named_children())):
        raise SpecError(f"FreeNoise cannot take over a motion block with layers {sorted(dict(block.named_children()))}",
                        field="context_length")
    for name, child in block.named_children():
        setattr(shell, name, child)
    shell.set_chunk_feed_forward(block._chunk_size, block._chunk_dim)
    return shell


def _split_targets(unet):
    """(owner, attribute or module list, index) of every module `enable_free_noise_split_inference` wraps."""
    for block in _blocks(unet):
        for motion_module in getattr(block, "motion_modules", None) or []:
            yield motion_module, "proj_in", None
            yield motion_module, "proj_out", None
            for i in range(len(motion_module.transformer_blocks)):
                yield motion_module.transformer_blocks, None, i
        for name in ("attentions", "resnets", "downsamplers", "upsamplers"):
            for i in range(len(getattr(block, name, None) or [])):
                yield getattr(block, name), None, i


@contextmanager
def free_noise(pipe, context_length: int, context_stride: int):
    """Sample with FreeNoise on `pipe` (an AnimateDiff pipeline built with its `motion_adapter`); the UNet's
    modules are the same objects again afterwards, whatever happens inside."""
    unet = pipe.unet
    originals = [(owner, attr, i, getattr(owner, attr) if attr else owner[i]) for owner, attr, i in
                 [*((blocks, None, i) for blocks, i in _motion_blocks(unet)), *_split_targets(unet)]]
    try:
        for blocks, i in _motion_blocks(unet):
            blocks[i] = _sharing(blocks[i], context_length, context_stride)
        pipe.enable_free_noise(context_length, context_stride)  # blocks already FreeNoise: it only sets them up
        pipe.enable_free_noise_split_inference(spatial_split_size=256, temporal_split_size=context_length)
        yield pipe
    finally:
        for owner, attr, i, module in reversed(originals):
            if attr:
                setattr(owner, attr, module)
            else:
                owner[i] = module
