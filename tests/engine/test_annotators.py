"""Annotated controls on the tiny base: a depth estimator and a pose estimator in the real transformers layouts
(random weights, saved with save_pretrained) compute the conditioning frames of a known reference at the video's
size and frame count (depth: as transformers' own depth pipeline computes them; openpose: OpenPose's drawing of
known keypoints), and they reach the ControlNet and change the video."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

import engine
from engine import annotators, conditioning, export, pose_maps
from engine.specs import ControlSpec, SampleSpec
from engine.tiny_models import save_tiny_depth_estimator, save_tiny_pose_estimator
from tests.engine.test_control import FAST, square_frames


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory):
    return save_tiny_depth_estimator(tmp_path_factory.mktemp("depth"))


@pytest.fixture(scope="module")
def depth(base, depth_dir):
    return engine.load_annotator(base, "depth", str(depth_dir))


@pytest.fixture(scope="module")
def pose(base, tmp_path_factory):
    return engine.load_annotator(base, "openpose", str(save_tiny_pose_estimator(tmp_path_factory.mktemp("pose"))))


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


def test_openpose_maps_draw_known_keypoints_as_openpose_does():
    coco = np.full((17, 2), 5.0)
    coco[5], coco[6] = (26, 16), (6, 16)  # left and right shoulder: the neck is (16, 16)
    scores = np.full(17, 0.1)
    scores[[5, 6]] = 0.9
    keypoints = pose_maps.openpose_from_coco(coco, scores, threshold=0.3)
    assert keypoints.shape == (18, 2) and keypoints[1].tolist() == [16, 16] and keypoints[2].tolist() == [6, 16]
    assert np.isnan(keypoints[0]).all(), "the nose scored below the threshold: not drawn"
    canvas = pose_maps.draw_body(keypoints, 32, 32)
    assert canvas.shape == (32, 32, 3) and canvas.dtype == np.uint8
    assert canvas[16, 16].tolist() == [255, 85, 0] and canvas[16, 6].tolist() == [255, 170, 0], "keypoint discs"
    assert canvas[16, 11].tolist() == [153, 0, 0] and canvas[16, 21].tolist() == [153, 51, 0], "the limbs, at 60%"
    drawn = np.argwhere(canvas.any(axis=-1))
    assert drawn[:, 0].min() >= 14 and drawn[:, 0].max() <= 18, "nothing but the shoulders' two limbs"


def test_openpose_annotator_draws_its_keypoints_in_openposes_palette(pose):
    frames = square_frames(4, size=32)
    maps = pose(frames)
    assert maps.shape == (4, 32, 32, 3) and maps.dtype == np.uint8
    palette = {(0, 0, 0), *pose_maps.COLORS, *(tuple(int(c * 0.6) for c in color) for color in pose_maps.COLORS)}
    assert {tuple(p) for p in maps.reshape(-1, 3).tolist()} <= palette, "only OpenPose's colours on black"
    points, scores = pose.keypoints(frames)
    assert points.shape == (4, 17, 2) and scores.shape == (4, 17)
    expected = [pose_maps.draw_body(pose_maps.openpose_from_coco(p, s, annotators.POSE_THRESHOLD), 32, 32)
                for p, s in zip(points, scores)]
    np.testing.assert_array_equal(maps, np.stack(expected))
    assert maps.any(), "the seeded estimator scores some keypoints above the threshold: they are drawn"


SAMPLE = dict(prompt="a toy", method="base", **FAST)


@pytest.fixture(scope="module")
def plain_and_canny(base, controlnet, reference):
    """The video without a control, and under the canny control of the same reference."""
    canny = ControlSpec(video=str(reference), type="canny", source_frames=6)
    return render(base, SampleSpec(**SAMPLE)), render(base, SampleSpec(**SAMPLE, control=canny), controlnet)


@pytest.mark.parametrize("kind", ["depth", "openpose"])
def test_annotated_control_reaches_the_controlnet(request, base, controlnet, reference, plain_and_canny, kind):
    annotator = request.getfixturevalue("depth" if kind == "depth" else "pose")
    control = ControlSpec(video=str(reference), type=kind, source_frames=6)
    sample = SampleSpec(**SAMPLE, control=control)
    used = engine.sampling.reference_frames(sample, engine.sampling.resolve_sample(base, sample), annotator)
    expected = annotator(conditioning.read_reference(reference, 4, 32, 32, total=6))
    assert used["control"].shape == (4, 32, 32, 3), "the reference resampled to the video's frames and size"
    np.testing.assert_array_equal(used["control"], expected)
    plain, canny = plain_and_canny
    controlled = render(base, sample, controlnet, annotator)
    zero = render(base, dataclasses.replace(sample, control=dataclasses.replace(control, scale=0.0)), controlnet,
                  annotator)
    assert controlled.shape == plain.shape == (4, 32, 32, 3)
    assert np.abs(controlled - plain).max() > 1e-3, f"the {kind} control changes the video"
    assert np.abs(controlled - canny).max() > 1e-3, f"the {kind} maps, not the edges, condition it"
    np.testing.assert_allclose(zero, plain, atol=1e-6)


def test_annotated_control_needs_its_annotator_and_a_known_type(base, controlnet, reference, depth_dir, tmp_path):
    sample = SampleSpec(prompt="x", method="base", control=ControlSpec(video=str(reference), type="depth"), **FAST)
    with pytest.raises(engine.SpecError, match="annotator") as info:
        render(base, sample, controlnet)
    assert info.value.field == "control.type"
    with pytest.raises(engine.SpecError, match="no annotator"):
        engine.load_annotator(base, "canny", str(depth_dir))
    with pytest.raises(engine.ModelLoadError, match="depth annotator"):
        engine.load_annotator(base, "depth", str(tmp_path / "missing"))
    with pytest.raises(engine.ModelLoadError, match="keypoints"):  # a depth model is no pose estimator
        engine.load_annotator(base, "openpose", str(depth_dir))
    assert set(annotators.LOADERS) == {"depth", "openpose", "lineart"}


# The architectures of the sd15 defaults (common/presets.py ANNOTATORS), as their hub configs give them.
DPT_HYBRID_MIDAS = dict(is_hybrid=True, image_size=384, neck_hidden_sizes=[256, 512, 768, 768],
                        backbone_featmap_shape=[1, 1024, 24, 24], backbone_out_indices=[2, 5, 8, 11],
                        neck_ignore_stages=[0, 1], reassemble_factors=[1, 1, 1, 0.5], readout_type="project")


@pytest.mark.slow
@pytest.mark.heavy
def test_real_size_annotators_make_sd15_sized_maps():
    """MiDaS v3 DPT-hybrid (122M parameters) and ViTPose-B (86M), random weights, on two 512x512 frames."""
    import torch
    from transformers import (
        DPTConfig,
        DPTForDepthEstimation,
        DPTImageProcessorPil,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessorPil,
    )

    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    depth = annotators.DepthEstimator(DPTForDepthEstimation(DPTConfig(**DPT_HYBRID_MIDAS)).eval(),
                                      DPTImageProcessorPil(size={"height": 384, "width": 384}))
    maps = depth(frames)
    assert maps.shape == (2, 512, 512, 3) and maps.min() == 0 and maps.max() == 255
    pose = annotators.PoseEstimator(VitPoseForPoseEstimation(VitPoseConfig(num_labels=17)).eval(),
                                    VitPoseImageProcessorPil())
    points, scores = pose.keypoints(frames)
    assert points.shape == (2, 17, 2) and scores.shape == (2, 17)
    assert pose(frames).shape == (2, 512, 512, 3)
