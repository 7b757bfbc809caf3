"""Videos longer than the motion modules' context, with diffusers' FreeNoise (Qiu et al., 2023).

The UNet is called on one window of `context_length` frames at a time, window starts `context_stride` apart (the
last window ends at the last frame), and its noise predictions are fused with FreeNoise's pyramid weights
(`_windowed_forward`; diffusers' FreeNoise windows only the motion blocks, AnimateDiff-Evolved windows the whole
UNet, as here); the initial noise of each window is a shuffle of the first one's; a ``{frame: prompt}`` map is
embedded per frame, linearly interpolated between its keys (prompt travel). Every activation of a UNet call (its
skip connections, the motion modules' group norms) is then a window's, so memory is bounded by `context_length`,
not the video's length (`bench/long_video.py`): what grows with the length is the latents and the decoded frames.
The UNet runs about ``context_length / context_stride`` times per frame. A ControlNet's call is deferred to those
windows too (`_DeferredControl`): it works frame by frame, so running it on a window's frames is exact, and its
residuals (hundreds of times a latent's size) are never held for the whole video.

diffusers' `enable_free_noise` builds a new FreeNoise block per motion transformer block and loads the old one's
state dict into it: that copies weights inside a UNet shared by every job, and it fails half-way on peft LoRA
layers (the Motion Adapter), leaving the UNet half-converted. `free_noise` instead gives the FreeNoise blocks the
old blocks' own layers (adapters included) and puts everything back after. (diffusers'
`enable_free_noise_split_inference`, which chunks the spatial layers, has nothing left to do inside a window.)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention import BasicTransformerBlock, FreeNoiseTransformerBlock
from diffusers.models.unets.unet_motion_model import UNetMotionOutput

from common.long_video import LongVideoError, check_prompt_frames, context_window, parse_prompt, windows
from engine.errors import SpecError


class _FreeNoiseBlock(FreeNoiseTransformerBlock):
    """diffusers' FreeNoise block, its last window always ending at the last frame.

    When ``(num_frames - context_length) % context_stride > 1``, diffusers 0.42.1 adds the last window's frames
    past the previous window with their own pyramid weights but counts one weight for all of them, so those
    frames come out scaled by ``w_i / w_0`` (2/3, 1/3 ... of what they should be) at every motion block. With the
    last window in the list itself it is fused like every other (`test_free_noise_fuses_every_frame`)."""

    def _get_frame_indices(self, num_frames: int) -> list[tuple[int, int]]:
        return windows(num_frames, self.context_length, self.context_stride)


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


class _DeferredControl:
    """A ControlNet's call kept until the UNet asks for some of its rows (`rows`): the pipelines pass what the
    ControlNet returned straight to the UNet, so returning this in place of the residuals lets the windowed UNet
    call (`_windowed_forward`) run the ControlNet on its window's frames only. Its inputs are (batch x frames, ...)
    rows like the UNet's embeddings; a guess-mode call (fewer rows than the UNet's) is run whole."""

    def __init__(self, forward, sample, timestep, kwargs: dict):
        self.forward, self.sample, self.timestep, self.kwargs = forward, sample, timestep, kwargs

    def rows(self, index=None) -> tuple[tuple, torch.Tensor]:
        """(down residuals, mid residual) for rows `index` (all of them when None)."""
        count = self.sample.shape[0]
        sample, kwargs = self.sample, self.kwargs
        if index is not None:
            sample = sample[index]
            kwargs = {name: _rows(value, index, count) for name, value in kwargs.items()}
        return self.forward(sample, self.timestep, **kwargs | {"return_dict": False})


def _rows(value, index, count: int):
    """Rows `index` of a per-frame input of `count` (batch x frames) rows, or of each in a list of them (a
    MultiControlNet's conditions); anything else (None, a scale, a shared tensor) as it is."""
    if isinstance(value, list):
        return [_rows(v, index, count) for v in value]
    return value[index] if isinstance(value, torch.Tensor) and value.shape[0] == count else value


def _deferring_forward(forward):
    """`forward` (a ControlNet's, or a MultiControlNetModel's) returning a `_DeferredControl` for both outputs."""

    def call(sample, timestep, *args, **kwargs):
        if args:  # the pipelines pass everything after the timestep by name
            return forward(sample, timestep, *args, **kwargs)
        deferred = _DeferredControl(forward, sample, timestep, kwargs)
        return deferred, deferred

    return call


def _windowed_forward(forward, block: _FreeNoiseBlock):
    """`forward` (a UNetMotionModel's) run on each window of `block`'s frames and fused with its pyramid weights.

    Per-frame inputs are sliced with their window: the prompt embeddings and a ControlNet's residuals are
    (batch x frames, ...), batch-major (row ``b * frames + f``, as the pipelines repeat them). A video within one
    window is the plain call."""

    def call(sample, timestep, encoder_hidden_states, *args, down_block_additional_residuals=None,
             mid_block_additional_residual=None, return_dict=True, **kwargs):
        batch, frames = sample.shape[0], sample.shape[2]
        control = down_block_additional_residuals
        if isinstance(control, _DeferredControl) and (frames <= block.context_length
                                                      or control.sample.shape[0] != batch * frames):
            control = None  # one window, or a guess-mode call: the ControlNet runs whole
            down_block_additional_residuals, mid_block_additional_residual = down_block_additional_residuals.rows()
        if frames <= block.context_length:
            return forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict,
                           down_block_additional_residuals=down_block_additional_residuals,
                           mid_block_additional_residual=mid_block_additional_residual, **kwargs)

        fused = torch.zeros_like(sample)
        total = torch.zeros(frames, dtype=sample.dtype, device=sample.device)
        for start, end in block._get_frame_indices(frames):
            index = (torch.arange(batch, device=sample.device)[:, None] * frames
                     + torch.arange(start, end, device=sample.device)).flatten()
            if isinstance(control, _DeferredControl):
                down, mid = control.rows(index)
            else:
                down = None if down_block_additional_residuals is None else tuple(
                    _rows(r, index, batch * frames) for r in down_block_additional_residuals)
                mid = _rows(mid_block_additional_residual, index, batch * frames)
            out = forward(sample[:, :, start:end], timestep, _rows(encoder_hidden_states, index, batch * frames), *args,
                          down_block_additional_residuals=down, mid_block_additional_residual=mid,
                          return_dict=False, **kwargs)[0]
            weights = torch.tensor(block._get_frame_weights(end - start, block.weighting_scheme),
                                   dtype=sample.dtype, device=sample.device)
            fused[:, :, start:end] += out * weights[None, None, :, None, None]
            total[start:end] += weights
        fused /= total[None, None, :, None, None]
        return UNetMotionOutput(sample=fused) if return_dict else (fused,)

    return call


@contextmanager
def free_noise(pipe, context_length: int, context_stride: int):
    """Sample with FreeNoise on `pipe` (an AnimateDiff pipeline built with its `motion_adapter`); the UNet's
    modules are the same objects again afterwards, whatever happens inside."""
    unet, controlnet = pipe.unet, getattr(pipe, "controlnet", None)
    originals = [(blocks, i, blocks[i]) for blocks, i in _motion_blocks(unet)]
    patched = [m for m in (unet, controlnet) if m is not None]
    own_forwards = [vars(m).get("forward") for m in patched]  # a torch.compile wrapper has its own; else the class's
    try:
        for blocks, i in _motion_blocks(unet):
            blocks[i] = _sharing(blocks[i], context_length, context_stride)
        pipe.enable_free_noise(context_length, context_stride)  # blocks already FreeNoise: it only sets them up
        unet.forward = _windowed_forward(unet.forward, next(b[i] for b, i in _motion_blocks(unet)))
        if controlnet is not None:
            controlnet.forward = _deferring_forward(controlnet.forward)
        yield pipe
    finally:
        for module, own_forward in zip(patched, own_forwards):
            if own_forward is None:
                vars(module).pop("forward", None)
            else:
                module.forward = own_forward
        for blocks, i, module in originals:
            blocks[i] = module
