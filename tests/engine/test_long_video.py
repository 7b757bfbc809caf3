"""Long videos and prompt travel (`engine.free_noise`, `common.long_video`): FreeNoise windows on the tiny base."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffControlNetPipeline, AnimateDiffPipeline
from diffusers.models.attention import FreeNoiseTransformerBlock

import engine
from engine.free_noise import _FreeNoiseBlock, free_noise
from engine.models import make_scheduler
from engine.progress import Reporter
from engine.sampling import render_frames

pytestmark = pytest.mark.slow
# Two steps, so that the windows are fused and stepped more than once per video.
SMALL = dict(height=16, width=16, steps=2, seed=3, method="base")


def _state(unet) -> tuple[list[int], dict]:
    return [id(m) for m in unet.modules()], {k: v.clone() for k, v in unet.state_dict().items()}


def _same(unet, before) -> bool:
    ids, state = _state(unet)
    return ids == before[0] and state.keys() == before[1].keys() and all(
        torch.equal(state[k], before[1][k]) for k in state)


def test_free_noise_fuses_every_frame():
    """With its attention and feed-forward zeroed a block is the identity, so every frame must come out as it went
    in: ours does; diffusers 0.42.1's own block scales the frames past the last whole window (the reason for
    `_FreeNoiseBlock`: if this second assertion fails, diffusers fixed it and the subclass can go)."""
    hidden = torch.randn(3, 15, 32)  # 15 frames, windows of 8 every 4: (0, 8), (4, 12), then 3 frames left over
    outputs = {}
    for cls in (_FreeNoiseBlock, FreeNoiseTransformerBlock):
        block = cls(dim=32, num_attention_heads=2, attention_head_dim=16, double_self_attention=True,
                    positional_embeddings="sinusoidal", num_positional_embeddings=32, context_length=8,
                    context_stride=4)  # as in a motion module
        for layer in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]):
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
        with torch.no_grad():
            outputs[cls] = block(hidden)
    torch.testing.assert_close(outputs[_FreeNoiseBlock], hidden)
    scale = (outputs[FreeNoiseTransformerBlock] / hidden).mean(dim=(0, 2))
    assert torch.allclose(scale[:13], torch.ones(13), atol=1e-5) and scale[14] < 0.5


def test_the_unet_runs_one_window_at_a_time_and_fuses_its_noise_predictions(base):
    """Inside `free_noise` every UNet call sees at most `context_length` frames (so its activations are a
    window's); a frame only one window covers gets that window's prediction, computed with its own rows of the
    per-frame prompt embeddings, and a frame three windows cover their pyramid-weighted mean."""
    c = base.components
    unet = base.sampling_motion_unet()
    pipe = AnimateDiffPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=unet,
                               motion_adapter=base.motion_adapter, scheduler=make_scheduler(base, "ddim"))
    gen = torch.Generator().manual_seed(0)
    frames, size = 40, 16 // pipe.vae_scale_factor  # windows of 16 every 4: (0, 16), (4, 20) ... (24, 40)
    sample = torch.randn(2, unet.config.in_channels, frames, size, size, generator=gen)
    text = torch.randn(2 * frames, 77, unet.config.cross_attention_dim, generator=gen)  # a prompt per frame
    t = torch.tensor(500)
    seen: list[int] = []
    hook = unet.conv_in.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        with torch.inference_mode(), free_noise(pipe, 16, 4):
            fused = unet(sample, t, encoder_hidden_states=text).sample
    finally:
        hook.remove()
    assert fused.shape == sample.shape and len(seen) == 7 and max(seen) == 2 * 16, seen

    def window(start):
        rows = torch.cat([torch.arange(start, start + 16), frames + torch.arange(start, start + 16)])
        with torch.inference_mode():
            return unet(sample[:, :, start:start + 16], t, encoder_hidden_states=text[rows]).sample

    first, last = window(0), window(24)
    torch.testing.assert_close(fused[:, :, :4], first[:, :, :4])
    torch.testing.assert_close(fused[:, :, 36:], last[:, :, 12:])
    pyramid = [*range(1, 9), *range(8, 0, -1)]  # frame 10 is at 10, 6 and 2 in the windows from 0, 4 and 8
    expected = sum(pyramid[p] * window(s)[:, :, p] for s, p in ((0, 10), (4, 6), (8, 2))) / (
        pyramid[10] + pyramid[6] + pyramid[2])
    torch.testing.assert_close(fused[:, :, 10], expected)
    assert not torch.allclose(fused[:, :, 10], first[:, :, 10], atol=1e-4)  # the windows do differ there


def test_a_controlnet_runs_on_each_window_and_gives_what_it_gives_on_the_whole_video(base):
    """Inside `free_noise` a ControlNet's call is deferred to the UNet's windows: it never sees more than a
    window's frames, and since it works frame by frame the fused prediction equals the one from residuals computed
    on all frames at once (the ControlNet and the UNet put back afterwards)."""
    c = base.components
    unet, controlnet = base.sampling_motion_unet(), engine.load_controlnet(base, "builtin")
    pipe = AnimateDiffControlNetPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                         unet=unet, controlnet=controlnet, motion_adapter=base.motion_adapter,
                                         scheduler=make_scheduler(base, "ddim"))
    gen = torch.Generator().manual_seed(1)
    frames, size = 40, 16 // pipe.vae_scale_factor
    sample = torch.randn(2, unet.config.in_channels, frames, size, size, generator=gen)
    flat = sample.transpose(1, 2).flatten(0, 1)  # (batch x frames, ...) rows, as the pipelines give the ControlNet
    text = torch.randn(2 * frames, 77, unet.config.cross_attention_dim, generator=gen)
    cond = torch.rand(2 * frames, 3, 16, 16, generator=gen)
    t = torch.tensor(500)
    control = dict(encoder_hidden_states=text, controlnet_cond=cond, conditioning_scale=1.0, guess_mode=False,
                   return_dict=False)
    with torch.inference_mode():
        down, mid = controlnet(flat, t, **control)  # the whole video at once, outside free_noise
    seen: list[int] = []
    hook = controlnet.conv_in.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        with torch.inference_mode(), free_noise(pipe, 16, 4):
            expected = unet(sample, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid).sample
            plain = unet(sample, t, encoder_hidden_states=text).sample
            deferred = controlnet(flat, t, **control)
            fused = unet(sample, t, encoder_hidden_states=text, down_block_additional_residuals=deferred[0],
                         mid_block_additional_residual=deferred[1]).sample
    finally:
        hook.remove()
    assert len(seen) == 7 and max(seen) == 2 * 16, seen  # 7 windows of 16 frames, the CFG batch of 2
    torch.testing.assert_close(fused, expected)
    assert (fused - plain).abs().mean(dim=(0, 1, 3, 4)).min() > 1e-5, "the control reaches every frame"
    assert "forward" not in vars(controlnet) and "forward" not in vars(unet)


def test_a_96_frame_video_samples_in_windows_and_leaves_the_unet_as_it_was(base):
    unet = base.sampling_motion_unet()
    before = _state(unet)
    spec = engine.SampleSpec(prompt="a toy", num_frames=96, **SMALL)
    frames, _ = render_frames(base, None, spec, Reporter())
    assert frames.shape == (96, 16, 16, 3) and np.isfinite(frames).all()
    assert frames.std(axis=(1, 2, 3)).min() > 0  # no frame left blank by the windows
    assert _same(unet, before), "the shared UNet holds its own blocks and weights again"
    cancelled = Reporter(should_cancel=lambda: True)
    with pytest.raises(engine.CancelledError):
        render_frames(base, None, spec, cancelled)
    assert _same(unet, before), "... also when sampling stops inside the windows"


def test_a_context_covering_the_video_is_the_plain_path(base):
    """A video within its context samples in one plain pass (bit-equal); FreeNoise forced by a one-key prompt map
    runs one window of every frame, which equals it up to float rounding (diffusers multiplies and divides by the
    pyramid weights)."""
    spec = engine.SampleSpec(prompt="a toy", num_frames=16, **SMALL)
    plain, _ = render_frames(base, None, spec, Reporter())
    covered, _ = render_frames(base, None, replace(spec, context_length=16), Reporter())
    assert (covered == plain).all()
    one_window, _ = render_frames(base, None, replace(spec, prompt={0: "a toy"}), Reporter())
    assert not (one_window == plain).all()  # it did run the FreeNoise blocks ...
    np.testing.assert_allclose(one_window, plain, atol=1e-5)  # ... to the same video


def test_prompt_travel_interpolates_embeddings_between_key_frames(base):
    """diffusers' semantics: frame k between keys i < j gets ((j - k) e_i + (k - i) e_j) / (j - i); after the
    last key, its prompt; a key repeated ({0: a, 24: a, 48: b}) holds a until frame 24."""
    c = base.components
    pipe = AnimateDiffPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                               unet=base.sampling_motion_unet(), motion_adapter=base.motion_adapter,
                               scheduler=make_scheduler(base, "ddim"))
    with torch.inference_mode(), free_noise(pipe, 16, 4):
        def embed(prompt):
            return pipe._encode_prompt_free_noise(prompt, 64, base.device, 1, False)[0]

        a, b = embed("a toy")[0], embed("a red ball")[0]
        travel = embed({0: "a toy", 48: "a red ball"})
        hold = embed({0: "a toy", 24: "a toy", 48: "a red ball"})
    torch.testing.assert_close(travel[0], a)
    torch.testing.assert_close(travel[12], 0.75 * a + 0.25 * b)
    for k in (48, 63):
        torch.testing.assert_close(travel[k], b)
    for k in (0, 12, 24):
        torch.testing.assert_close(hold[k], a)
    torch.testing.assert_close(hold[36], 0.5 * a + 0.5 * b)


def test_a_prompt_map_changes_the_frames_after_its_key_far_more_than_those_before(base):
    """{0: a, 24: a, 48: b} against the constant a: frames from 48 on are b's and change; frames well before 24
    have a's embedding exactly and change only through the motion modules (their windows overlap, and their
    group norms span every frame), much less."""
    spec = engine.SampleSpec(prompt={0: "a toy"}, num_frames=64, context_length=16, **SMALL)
    constant, _ = render_frames(base, None, spec, Reporter())
    travel, _ = render_frames(base, None, replace(spec, prompt={0: "a toy", 24: "a toy", 48: "a red ball"}),
                              Reporter())
    change = np.abs(travel - constant).mean(axis=(1, 2, 3))
    assert change[48:].mean() > 1e-3
    assert change[:12].mean() < 0.25 * change[48:].mean(), change.round(4)


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_one_step_is_the_models_prediction_not_the_initial_noise(base, scheduler):
    """A lone "linspace" step sits at t=0 and returns the initial noise whatever the UNet predicts; the product
    spaces a single step "trailing" (t=999), so one step follows the prompt; two steps keep "linspace"."""
    one = make_scheduler(base, scheduler, 1)
    one.set_timesteps(1)
    two = make_scheduler(base, scheduler, 2)
    two.set_timesteps(2)
    assert one.timesteps.tolist() == [999] and two.timesteps.tolist() == [999, 0]
    spec = engine.SampleSpec(prompt="a toy", num_frames=8, **{**SMALL, "steps": 1, "scheduler": scheduler})
    toy, _ = render_frames(base, None, spec, Reporter())
    ball, _ = render_frames(base, None, replace(spec, prompt="a red ball"), Reporter())
    assert np.abs(toy - ball).mean() > 1e-3


def test_free_noise_keeps_the_customizations_adapters(base, trained, checkpoints):
    """Both adapters act in the FreeNoise windows at their scales: one window of every frame (forced by a one-key
    prompt map) equals the plain path at every (spatial, motion) scale, and past the context each scale changes
    the video about as much as it does within it. diffusers' own `enable_free_noise` cannot take a UNet with
    LoRA layers (it reloads each block's state dict, strictly, into a new one): `free_noise` shares the layers."""
    manifest, out_dir, motion_cache = trained
    motion_file = motion_cache / manifest["motion_adapter"]["key"] / engine.MOTION_ADAPTER_FILE
    custom = engine.load_customization(base, out_dir, checkpoints["lora"], motion_file)
    before = _state(custom.unet)
    spec = engine.SampleSpec(prompt="a sks toy", num_frames=16, height=16, width=16, steps=2, seed=1)
    scales = {"spatial": dict(spatial_adapter_scale=0.0), "none": {}, "motion": dict(motion_adapter_scale=1.0),
              "double": dict(motion_adapter_scale=2.0)}  # "none": the Spatial Adapters at 1, no Motion Adapter
    runs = {"plain": (16, "a sks toy"), "one window": (16, {0: "a sks toy"}), "windows": (40, "a sks toy")}
    videos = {run: {k: render_frames(base, custom, replace(spec, num_frames=frames, prompt=prompt, **v),
                                     Reporter())[0] for k, v in scales.items()}
              for run, (frames, prompt) in runs.items()}
    for k in scales:  # one FreeNoise window: the plain path's videos, up to float rounding
        np.testing.assert_allclose(videos["one window"][k], videos["plain"][k], atol=1e-5, err_msg=k)
    change = {run: {k: float(np.abs(videos[run][k] - videos[run]["none"]).mean()) for k in ("spatial", "motion",
                                                                                          "double")}
              for run in ("plain", "windows")}
    for run, by in change.items():
        assert min(by.values()) > 1e-4, (run, by)
        assert by["double"] > by["motion"], (run, by)  # the Motion Adapter's scale is applied, not just on/off
    for k in ("spatial", "motion"):
        assert change["windows"][k] > 0.3 * change["plain"][k], change  # as strong in the windows as in one pass
    assert _same(custom.unet, before), "the customization's UNet holds its own blocks and adapters again"
    c = base.components
    pipe = AnimateDiffPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                               unet=engine.load_customization(base, out_dir, checkpoints["lora"], motion_file).unet,
                               motion_adapter=base.motion_adapter, scheduler=make_scheduler(base, "ddim"))
    with pytest.raises(RuntimeError, match="state_dict"):
        pipe.enable_free_noise(16, 4)


@pytest.mark.parametrize("change,field", [
    ({"context_length": 33}, "context_length"), ({"context_length": 1}, "context_length"),
    ({"context_length": 8, "context_stride": 9}, "context_stride"), ({"context_stride": 0}, "context_stride"),
    ({"prompt": {0: "a", 40: "b"}}, "prompt"), ({"prompt": {1: "a"}}, "prompt"), ({"prompt": {0: " "}}, "prompt"),
])
def test_bad_windows_and_prompt_maps_are_spec_errors_naming_the_field(base, change, field):
    with pytest.raises(engine.SpecError) as err:
        render_frames(base, None, engine.SampleSpec(**{"prompt": "a toy", "num_frames": 40, **SMALL, **change}),
                      Reporter())
    assert err.value.field == field
