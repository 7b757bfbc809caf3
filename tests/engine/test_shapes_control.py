"""The shapes world's ControlNet: the IoU measure on constructed masks, its training command for a few steps, the
evidence's reference paths, and the committed ControlNet served by the `shapes` preset (and not a no-op)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
from common.presets import CONTROLNETS, SHAPES_CONTROLNET_CANNY
from engine import conditioning, controlnets
from engine.shapes import control_eval, save, world
from engine.shapes import judge as judge_mod
from engine.shapes.paths import ROOT
from engine.shapes.train_controlnet import edge_maps, train_controlnet


def box(top: int, left: int, h: int, w: int, size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + h, left:left + w] = True
    return mask


def test_mask_iou_on_constructed_masks():
    a = box(0, 0, 4, 4)
    assert judge_mod.mask_iou(a, a) == 1.0
    assert judge_mod.mask_iou(a, box(10, 10, 4, 4)) == 0.0
    assert judge_mod.mask_iou(a, box(0, 2, 4, 4)) == pytest.approx(8 / 24)  # 4x2 shared, 4x6 covered
    assert judge_mod.mask_iou(box(0, 0, 4, 8), a) == 0.5  # a inside a box twice its size
    empty = np.zeros((32, 32), bool)
    assert judge_mod.mask_iou(empty, empty) == 1.0 and judge_mod.mask_iou(a, empty) == 0.0


def test_frame_ious_read_the_largest_object_of_each_frame():
    frame = np.full((32, 32, 3), world.BACKGROUND, np.uint8)
    frame[4:12, 4:12] = world.COLOURS["red"]  # the object: 8x8
    frame[20:22, 20:22] = world.COLOURS["blue"]  # a speck below MIN_OBJECT_PIXELS: not an object
    blank = np.full((32, 32, 3), world.BACKGROUND, np.uint8)
    ious = judge_mod.frame_ious(np.stack([frame, frame, blank]),
                                np.stack([box(4, 4, 8, 8), box(4, 8, 8, 8), box(4, 4, 8, 8)]))
    assert ious == [1.0, pytest.approx(32 / 96), 0.0]


def test_reference_paths_are_diagonals_and_arcs_inside_the_frame():
    diagonal, arc = control_eval.reference(0), control_eval.reference(1)
    for ref in (diagonal, arc, control_eval.reference(6)):
        assert ref.frames.shape == (8, 32, 32, 3) and ref.masks.any(axis=(1, 2)).all()
        assert not (ref.masks[:, 0].any() or ref.masks[:, -1].any() or ref.masks[:, :, 0].any()
                    or ref.masks[:, :, -1].any()), "the whole object stays inside the frame"
    moved = diagonal.centroids[-1] - diagonal.centroids[0]
    assert abs(moved[0]) >= 10 and abs(moved[0] - moved[1]) < 1  # both axes at once: no direction word fits it
    mid = (arc.centroids[0] + arc.centroids[-1]) / 2
    assert np.abs(arc.centroids[4] - mid).max() > 2, "the arc leaves the straight line"


@pytest.fixture(scope="module")
def parts():
    return save.load_base(ROOT)


def test_training_runs_a_few_steps_on_the_serving_canny_and_moves_the_zero_convolutions(parts):
    torch.set_num_threads(1)
    frames = np.stack([world.image_sample(np.random.default_rng(i)).frames[0] for i in range(3)])
    np.testing.assert_array_equal(edge_maps(frames).permute(0, 2, 3, 1).numpy(), conditioning.canny(frames))
    controlnet, metrics = train_controlnet(parts, steps=3, batch=4, num_images=64, eval_every=3, eval_images=2)
    assert [c["step"] for c in metrics["iou_curve"]] == [0, 3] and all(0 <= c["iou"] <= 1 for c in metrics["iou_curve"])
    assert all(conv.weight.abs().sum() > 0 for conv in controlnets.zero_convolutions(controlnet))
    assert not any(p.requires_grad for p in parts["unet"].parameters()), "the T2I stays frozen"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> engine.BaseModels:
    return engine.load_base_models(engine.ModelSpec(preset="shapes"), tmp_path_factory.mktemp("shapes"))


def test_the_shapes_preset_serves_the_committed_controlnet_and_it_acts(shapes, tmp_path):
    assert CONTROLNETS["shapes"]["canny"] == str(SHAPES_CONTROLNET_CANNY) == str(ROOT / "controlnet-canny")
    assert CONTROLNETS["sd15"]["canny"] == "lllyasviel/control_v11p_sd15_canny"
    files = sorted(p.name for p in SHAPES_CONTROLNET_CANNY.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert (SHAPES_CONTROLNET_CANNY / "diffusion_pytorch_model.safetensors").stat().st_size < 8 * 1024**2
    controlnet = engine.load_controlnet(shapes, CONTROLNETS["shapes"]["canny"])  # from_pretrained of the directory
    assert all(conv.weight.abs().sum() > 0 for conv in controlnets.zero_convolutions(controlnet)), "trained"
    ref = control_eval.reference(0)
    path = engine.export.write_video(ref.frames, tmp_path, "ref", "gif", 8)[0]
    sample = engine.SampleSpec(prompt="a red square", method="base", steps=4, seed=1)
    control = engine.ControlSpec(video=str(path), type="canny", source_frames=8)

    def render(spec, net=None):
        return engine.sampling.render_frames(shapes, None, spec, engine.progress.Reporter(None, None),
                                             controlnet=net)[0]

    plain = render(sample)
    controlled = render(engine.SampleSpec(**{**sample.__dict__, "control": control}), controlnet)
    assert np.abs(controlled - plain).max() > 0.05, "the committed ControlNet is not a no-op"
