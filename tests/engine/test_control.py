"""Conditional generation on the tiny base: Canny conditioning of known frames, reference resampling, and the
control and the init reaching the real AnimateDiff pipelines (with vs without differ; control scale 0 equals
without)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import engine
from common.presets import CONTROLNETS
from common.video_to_video import init_problem, init_steps
from engine import conditioning, controlnets, export
from engine.models import make_scheduler
from engine.specs import ControlSpec, InitSpec, SampleSpec

FAST = dict(num_frames=4, height=32, width=32, steps=2, seed=3)


def square_frames(n: int = 4, size: int = 32, value: int = 255, step: int = 2) -> np.ndarray:
    """A white (or `value`) 12x12 square on black moving right by `step` pixels a frame: (n, size, size, 3)."""
    frames = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i, 10:22, 4 + step * i:16 + step * i] = value
    return frames


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A GIF of the moving square (GIF keeps grey levels exactly)."""
    return export.write_video(square_frames(), tmp_path_factory.mktemp("ref"), "square", "gif", 8)[0]


@pytest.fixture(scope="module")
def controlnet(base):
    return engine.load_controlnet(base, "builtin")


def render(base, sample, custom=None, controlnet=None):
    frames, _ = engine.sampling.render_frames(base, custom, sample, engine.progress.Reporter(None, None),
                                              controlnet=controlnet)
    return frames


def test_canny_marks_exactly_the_square_outline_and_follows_its_thresholds():
    frame = square_frames(1)[0]
    edges = conditioning.canny(frame[None])[0]
    assert edges.shape == (32, 32, 3) and set(np.unique(edges)) == {0, 255}
    assert (edges[..., 0] == edges[..., 1]).all() and (edges[..., 0] == edges[..., 2]).all()
    on = edges[..., 0] > 0
    ring = np.zeros((32, 32), bool)
    ring[9:23, 3:17] = True
    ring[11:21, 5:15] = False  # the interior, two pixels in
    assert on.any() and not (on & ~ring).any(), "edges only on the square's outline"
    assert (on[10:22, 3] | on[10:22, 4]).all(), "the left side is one unbroken edge"
    faint = square_frames(1, value=20)[0][None]  # a faint square: gradients far below 100/200
    assert not conditioning.canny(faint).any()
    assert conditioning.canny(faint, 10, 30).any()


def test_frame_indices_spread_over_the_reference():
    assert conditioning.frame_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert conditioning.frame_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert conditioning.frame_indices(1, 3).tolist() == [0, 0, 0]


def test_reference_is_resampled_in_time_and_size(tmp_path):
    frames = np.zeros((10, 32, 64, 3), np.uint8)  # 10 frames, 64 wide: frame i has grey level 20 i
    for i in range(10):
        frames[i] = 20 * i
    frames[:, :, 16:48] += 5  # the centre half, kept by the centre crop
    path = export.write_video(frames, tmp_path, "grey", "gif", 8)[0]
    for total in (10, None):  # known frame count (decode keeps only the frames used) or not
        out = conditioning.read_reference(path, 4, 16, 16, total=total)
        assert out.shape == (4, 16, 16, 3)
        assert [int(round(f.mean())) for f in out] == [5, 65, 125, 185]  # frames 0, 3, 6, 9, centre only
    two = export.write_video(np.stack([np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 200, np.uint8)]),
                             tmp_path, "two", "gif", 8)[0]
    for total in (2, None):  # a GIF of two frames decodes as two (ffmpeg's constant rate made 24 copies)
        out = conditioning.read_reference(two, 4, 16, 16, total=total)
        assert [int(round(f.mean())) for f in out] == [0, 0, 200, 200]


def test_control_reaches_the_pipeline_and_scale_zero_equals_no_control(base, controlnet, reference):
    plain = render(base, SampleSpec(prompt="a toy", method="base", **FAST))
    control = ControlSpec(video=str(reference), type="canny", source_frames=4)
    controlled = render(base, SampleSpec(prompt="a toy", method="base", control=control, **FAST), controlnet=controlnet)
    zero = render(base, SampleSpec(prompt="a toy", method="base", control=dataclasses.replace(control, scale=0.0),
                                   **FAST), controlnet=controlnet)
    assert controlled.shape == plain.shape == (4, 32, 32, 3)
    assert np.abs(controlled - plain).max() > 1e-3, "the control changes the video"
    np.testing.assert_allclose(zero, plain, atol=1e-6)
    late = render(base, SampleSpec(prompt="a toy", method="base", control=dataclasses.replace(control, start=0.5),
                                   **FAST), controlnet=controlnet)
    assert np.abs(late - controlled).max() > 1e-4, "start is passed on: a control over half the steps differs"


def test_precomputed_frames_are_the_conditioning_itself(base, controlnet, reference):
    edges = export.write_video(conditioning.canny(square_frames()), reference.parent, "edges", "gif", 8)[0]
    canny = ControlSpec(video=str(reference), type="canny")
    precomputed = ControlSpec(video=str(edges), type="precomputed")
    one = render(base, SampleSpec(prompt="a toy", method="base", control=canny, **FAST), controlnet=controlnet)
    two = render(base, SampleSpec(prompt="a toy", method="base", control=precomputed, **FAST), controlnet=controlnet)
    np.testing.assert_allclose(one, two, atol=1e-6)  # the same edge maps, computed here or by the client


V2V = dict(FAST, steps=4)  # strength 0.5 keeps 2 of them; of 2 steps it would keep t=0 alone (refused)


def test_init_video_reaches_the_pipeline(base, reference, tmp_path):
    plain = render(base, SampleSpec(prompt="a toy", method="base", **V2V))
    init = InitSpec(video=str(reference), strength=0.5)
    v2v = render(base, SampleSpec(prompt="a toy", method="base", init=init, **V2V))
    other = export.write_video(square_frames(value=120, step=4), tmp_path, "other", "gif", 8)[0]
    v2v_other = render(base, SampleSpec(prompt="a toy", method="base", init=dataclasses.replace(init, video=str(other)),
                                        **V2V))
    assert v2v.shape == plain.shape
    assert np.abs(v2v - plain).max() > 1e-3 and np.abs(v2v - v2v_other).max() > 1e-3


def test_control_with_init_and_the_customized_unet(base, controlnet, trained, checkpoints, reference, tmp_path):
    _, cust_dir, _ = trained
    custom = engine.load_customization(base, cust_dir, checkpoints["lora"])
    control = ControlSpec(video=str(reference), type="canny")
    init = InitSpec(video=str(reference), strength=0.5)
    both = SampleSpec(prompt="a sks toy", control=control, init=init, **V2V)
    out = engine.generate(base, custom, both, tmp_path / "out", controlnet=controlnet)
    video = export.read_video(out["video"])
    assert video.shape == (4, 32, 32, 3) and out["method"] == "still-moving"
    stored = export.read_video(out["control"])  # the conditioning frames used, stored with the video
    expected = conditioning.canny(conditioning.read_reference(reference, 4, 32, 32))
    np.testing.assert_array_equal(stored > 127, expected > 127)  # GIF's palette: the same binary maps
    init_only = render(base, dataclasses.replace(both, control=dataclasses.replace(control, scale=0.0)), custom,
                       controlnet)
    np.testing.assert_allclose(init_only, render(base, dataclasses.replace(both, control=None), custom), atol=1e-6)
    naive = render(base, dataclasses.replace(both, method="naive"), custom, controlnet)
    base_unet = render(base, dataclasses.replace(both, method="base"), custom, controlnet)
    still_moving = render(base, both, custom, controlnet)
    # the tiny LoRA and 4-step adapter move the video little, but they move it (as tests/engine/test_method.py checks)
    assert not np.array_equal(naive, base_unet), "the customized UNet is the one under the ControlNet"
    assert not np.array_equal(naive, still_moving), "the Spatial Adapters act under the ControlNet"


def test_builtin_controlnet_is_seeded_for_tiny_and_a_no_op_untrained_elsewhere(base, controlnet, reference):
    """`builtin` off `tiny` is an untrained placeholder (zero convolutions: no effect); no preset serves it there
    any more: `shapes` serves its trained ControlNet (test_shapes_control.py shows it acts), `sd15` the hub's."""
    again = engine.load_controlnet(base, "builtin")
    for (name, a), (_, b) in zip(controlnet.state_dict().items(), again.state_dict().items()):
        assert (a == b).all(), name
    assert all(conv.weight.abs().sum() > 0 for conv in controlnets.zero_convolutions(controlnet))
    untrained = engine.load_controlnet(dataclasses.replace(base, spec=dataclasses.replace(base.spec, preset="sd15")),
                                       "builtin")
    assert all(conv.weight.abs().sum() == 0 for conv in controlnets.zero_convolutions(untrained))
    control = ControlSpec(video=str(reference), type="canny")
    plain = render(base, SampleSpec(prompt="a toy", method="base", **FAST))
    np.testing.assert_allclose(render(base, SampleSpec(prompt="a toy", method="base", control=control, **FAST),
                                      controlnet=untrained), plain, atol=1e-6)
    assert [name for name, nets in CONTROLNETS.items() if "builtin" in nets.values()] == ["tiny"]


def test_bad_control_and_init_are_spec_errors(base, controlnet, reference, tmp_path):
    with pytest.raises(engine.SpecError, match="ControlNet"):
        render(base, SampleSpec(prompt="x", method="base", control=ControlSpec(video=str(reference)), **FAST))
    with pytest.raises(engine.SpecError) as info:
        render(base, SampleSpec(prompt="x", method="base", init=InitSpec(video=str(reference), strength=0.2), **FAST))
    assert info.value.field == "init.strength"
    # 4 steps x 0.3 keeps one step: "linspace" DDIM and Euler end at t=0, so it would return the init video as it is
    for scheduler in ("ddim", "euler"):
        with pytest.raises(engine.SpecError, match="t=0") as info:
            render(base, SampleSpec(prompt="x", method="base", scheduler=scheduler, **V2V,
                                    init=InitSpec(video=str(reference), strength=0.3)))
        assert info.value.field == "init.strength"
    kept = render(base, SampleSpec(prompt="x", method="base", scheduler="dpm++", **V2V,  # its last step is above 0
                                   init=InitSpec(video=str(reference), strength=0.3)))
    assert kept.shape[0] == FAST["num_frames"]
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(engine.SpecError, match="does not decode"):
        conditioning.read_reference(junk, 4, 32, 32)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
def test_the_video_to_video_rule_is_what_the_schedulers_do(base, scheduler):
    """`common.video_to_video.init_problem` (the API's and the engine's check, torch-free) flags exactly the runs
    whose kept timesteps, as diffusers' `get_timesteps` takes them from the engine's schedulers, are none or t=0."""
    for steps in range(1, 13):
        schedule = make_scheduler(base, scheduler, steps)
        schedule.set_timesteps(steps)
        for strength in (0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0):
            kept = [int(t) for t in schedule.timesteps[steps - init_steps(steps, strength):]]
            assert (init_problem(steps, strength, scheduler) is not None) == (not any(kept)), (steps, strength, kept)



def test_a_long_video_samples_its_control_and_init_in_windows(base, controlnet, reference):
    """Past the context the UNet runs per window with that window's rows of the ControlNet's per-frame
    residuals (`engine.free_noise`): a control at scale 0 is still no control, at 1 it changes the video; a
    long video-to-video runs in windows too."""
    long = dict(FAST, num_frames=40, context_length=16, context_stride=8)
    plain = render(base, SampleSpec(prompt="a toy", method="base", **long))
    control = ControlSpec(video=str(reference), type="canny", source_frames=4)
    controlled = render(base, SampleSpec(prompt="a toy", method="base", control=control, **long), controlnet=controlnet)
    zero = render(base, SampleSpec(prompt="a toy", method="base", control=dataclasses.replace(control, scale=0.0),
                                   **long), controlnet=controlnet)
    assert controlled.shape == plain.shape == (40, 32, 32, 3)
    np.testing.assert_allclose(zero, plain, atol=1e-5)
    assert np.abs(controlled - plain).mean(axis=(1, 2, 3)).min() > 1e-4, "the control reaches every window"
    v2v = render(base, SampleSpec(prompt="a toy", method="base", init=InitSpec(video=str(reference), strength=0.5),
                                  **dict(long, steps=4)))
    assert v2v.shape == (40, 32, 32, 3) and np.abs(v2v - plain).max() > 1e-3
