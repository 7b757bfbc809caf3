"""Annotated controls on the tiny base: a depth estimator in the real transformers layout (random weights, saved
with save_pretrained) computes the conditioning frames of a known reference at the video's size and frame count,
as transformers' own depth pipeline computes them, and they reach the ControlNet and change the video."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

import engine
from engine import annotators, conditioning, export
from engine.specs import ControlSpec, SampleSpec
from engine.tiny_models import save_tiny_depth_estimator
from tests.engine.test_control import FAST, square_frames


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory):
    return save_tiny_depth_estimator(tmp_path_factory.mktemp("depth"))


@pytest.fixture(scope="module")
def depth(base, depth_dir):
    return engine.load_annotator(base, "depth", str(depth_dir))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Six frames of the moving square, 48x64 (resampled to 4 frames of 32x32 by the control)."""
    frames = np.zeros((6, 48, 64, 3), np.uint8)
    for i in range(6):
        frames[i, 14:34, 8 + 6 * i:28 + 6 * i] = (255, 200, 40)
    return export.write_video(frames, tmp_path_factory.mktemp("ref"), "square", "gif", 8)[0]


@pytest.fixture(scope="module")
def controlnet(base):
    return engine.load_controlnet(base, "builtin")


def test_depth_maps_are_the_depth_pipelines_at_the_videos_size(depth, depth_dir):
    frames = square_frames(4, size=32)
    maps = depth(frames)
    assert maps.shape == (4, 32, 32, 3) and maps.dtype == np.uint8
    assert (maps[..., 0] == maps[..., 1]).all() and (maps[..., 0] == maps[..., 2]).all(), "grey RGB"
    assert maps.min() == 0 and maps.max() == 255, "scaled over the clip to the full range"
    assert not np.array_equal(maps[0], maps[-1]), "the square moved: so did its depth"
    # one frame: the clip's scale is the frame's, so the maps are transformers' depth pipeline's (it truncates)
    reference = pipeline("depth-estimation", model=str(depth_dir), device="cpu")
    ours = depth(frames[1:2])[0, ..., 0].astype(int)
    theirs = np.asarray(reference(Image.fromarray(frames[1]))["depth"]).astype(int)
    assert theirs.shape == ours.shape and np.abs(ours - theirs).max() <= 1


def render(base, sample, controlnet=None, annotator=None):
    frames, _ = engine.sampling.render_frames(base, None, sample, engine.progress.Reporter(None, None),
                                              controlnet=controlnet, annotator=annotator)
    return frames


def test_depth_control_resamples_the_reference_reaches_the_controlnet_and_is_stored(base, depth, controlnet,
                                                                                    reference, tmp_path):
    control = ControlSpec(video=str(reference), type="depth", source_frames=6)
    sample = SampleSpec(prompt="a toy", method="base", control=control, format="gif", **FAST)
    out = engine.generate(base, None, sample, tmp_path / "out", controlnet=controlnet, annotator=depth)
    stored = export.read_video(out["control"])
    expected = depth(conditioning.read_reference(reference, 4, 32, 32, total=6))
    assert stored.shape == expected.shape == (4, 32, 32, 3)
    assert np.abs(stored.astype(int) - expected.astype(int)).max() <= 8, "the depth maps used, stored (GIF palette)"
    plain = render(base, dataclasses.replace(sample, control=None))
    with_depth = render(base, sample, controlnet, depth)
    canny = render(base, dataclasses.replace(sample, control=dataclasses.replace(control, type="canny")), controlnet)
    zero = render(base, dataclasses.replace(sample, control=dataclasses.replace(control, scale=0.0)), controlnet,
                  depth)
    assert export.read_video(out["video"]).shape == plain.shape == (4, 32, 32, 3)
    assert np.abs(with_depth - plain).max() > 1e-3, "the depth control changes the video"
    assert np.abs(with_depth - canny).max() > 1e-3, "the depth maps, not the edges, condition it"
    np.testing.assert_allclose(zero, plain, atol=1e-6)


def test_annotated_control_needs_its_annotator_and_a_known_type(base, controlnet, reference, depth_dir, tmp_path):
    sample = SampleSpec(prompt="x", method="base", control=ControlSpec(video=str(reference), type="depth"), **FAST)
    with pytest.raises(engine.SpecError, match="annotator") as info:
        render(base, sample, controlnet)
    assert info.value.field == "control.type"
    with pytest.raises(engine.SpecError, match="no annotator"):
        engine.load_annotator(base, "lineart", str(depth_dir))
    with pytest.raises(engine.ModelLoadError, match="depth annotator"):
        engine.load_annotator(base, "depth", str(tmp_path / "missing"))
    assert set(annotators.LOADERS) == {"depth"}
