"""The lineart annotator on the tiny base: a seeded random Generator state dict in lllyasviel/Annotators' file
layout (sk_model.pth, or sk_model.safetensors) loads as a state dict only and is checked against the architecture;
its maps are controlnet_aux's LineartDetector's (written out step by step here, since controlnet_aux cannot be
imported) at the video's size, white lines on black; they reach the ControlNet and change the video."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import engine
from engine import annotators, conditioning, lineart_model
from engine.specs import ControlSpec, SampleSpec
from engine.tiny_models import save_tiny_lineart
from tests.engine.test_annotators import SAMPLE, plain_and_canny, reference, render  # noqa: F401 (fixtures)
from tests.engine.test_control import square_frames

SMALL = 64  # a detect resolution for the control-flow tests: 512 costs ~9 s a frame on a CPU


@pytest.fixture(scope="module")
def lineart_dir(tmp_path_factory):
    return save_tiny_lineart(tmp_path_factory.mktemp("lineart"))


@pytest.fixture(scope="module")
def lineart(base, lineart_dir):
    return engine.load_annotator(base, "lineart", str(lineart_dir))


@pytest.fixture(scope="module")
def controlnet(base):
    return engine.load_controlnet(base, "builtin")


def controlnet_aux_lineart(model: lineart_model.Generator, frame: np.ndarray) -> np.ndarray:
    """controlnet_aux 0.0.10 LineartDetector.__call__(frame, coarse=False, output_type="np") for a frame already at
    the detect and image resolution (512x512: both of its resizes keep the frame as it is)."""
    image = torch.from_numpy(frame).float() / 255.0
    with torch.no_grad():
        line = model(image.permute(2, 0, 1)[None])[0][0].numpy()
    line = (line * 255.0).clip(0, 255).astype(np.uint8)
    return 255 - np.repeat(line[..., None], 3, axis=-1)


def test_weights_load_as_the_saved_state_dict_preferring_safetensors(base, lineart, lineart_dir, tmp_path):
    saved = torch.load(lineart_dir / "sk_model.pth", weights_only=True)
    loaded = lineart.model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert lineart.resolution == 512, "controlnet_aux's default detect resolution"
    both = save_tiny_lineart(tmp_path / "both")
    other = {k: v + 1 for k, v in saved.items()}
    save_file(other, both / "sk_model.safetensors")
    preferred = engine.load_annotator(base, "lineart", str(both)).model.state_dict()
    assert all(torch.equal(preferred[k], other[k]) for k in other), "sk_model.safetensors wins over sk_model.pth"


class NotWeights:
    pass


def test_the_loader_refuses_what_is_not_the_generators_state_dict(base, lineart_dir, tmp_path):
    state = torch.load(lineart_dir / "sk_model.pth", weights_only=True)
    (tmp_path / "shape").mkdir()
    torch.save({**state, "model0.1.weight": torch.zeros(32, 3, 7, 7)}, tmp_path / "shape" / "sk_model.pth")
    with pytest.raises(engine.ModelLoadError, match=r"not the lineart Generator's state dict .*'model0.1.weight' "
                                                    r"has shape \(32, 3, 7, 7\), expected \(64, 3, 7, 7\)"):
        engine.load_annotator(base, "lineart", str(tmp_path / "shape"))
    (tmp_path / "missing").mkdir()
    torch.save({k: v for k, v in state.items() if k != "model4.1.bias"}, tmp_path / "missing" / "sk_model.pth")
    with pytest.raises(engine.ModelLoadError, match="1 missing.*'model4.1.bias'"):
        engine.load_annotator(base, "lineart", str(tmp_path / "missing"))
    (tmp_path / "pickle").mkdir()
    torch.save({"model0.1.weight": NotWeights()}, tmp_path / "pickle" / "sk_model.pth")
    with pytest.raises(engine.ModelLoadError, match="could not load the lineart annotator"):  # weights_only
        engine.load_annotator(base, "lineart", str(tmp_path / "pickle"))
    with pytest.raises(engine.ModelLoadError, match="holds none of sk_model.safetensors, sk_model.pth"):
        engine.load_annotator(base, "lineart", str(tmp_path))
    with pytest.raises(engine.ModelLoadError, match="could not load the lineart annotator"):  # no dir, no repo id
        engine.load_annotator(base, "lineart", str(tmp_path / "absent"))


def test_maps_are_controlnet_aux_lineart_detectors(lineart):
    """At 512x512 (sd15's size) ours are controlnet_aux's exactly: one frame, ~10 s on a CPU."""
    frame = np.zeros((512, 512, 3), np.uint8)
    frame[100:400, 150:300] = (250, 200, 40)
    frame[300:480, 50:450] = (30, 60, 200)
    maps = lineart(frame[None])
    assert maps.shape == (1, 512, 512, 3) and maps.dtype == np.uint8
    np.testing.assert_array_equal(maps[0], controlnet_aux_lineart(lineart.model, frame))


def test_maps_have_the_videos_size_and_are_white_lines_on_black(lineart):
    small = dataclasses.replace(lineart, resolution=SMALL)
    frames = square_frames(4, size=32)
    maps = small(frames)
    assert maps.shape == (4, 32, 32, 3) and maps.dtype == np.uint8
    assert (maps[..., 0] == maps[..., 1]).all() and (maps[..., 0] == maps[..., 2]).all(), "grey RGB"
    np.testing.assert_array_equal(maps, small(frames), "deterministic")
    assert not np.array_equal(maps[0], maps[-1]), "the square moved: so did its lines"
    assert lineart_model.resize_image(np.zeros((48, 64, 3), np.uint8), 512).shape == (512, 704, 3), \
        "controlnet_aux's detect size: short side 512, sides rounded to multiples of 64"
    # the net's white paper (sigmoid 1) is the map's black, its black strokes (sigmoid 0) the map's white
    for bias, value in ((20.0, 0), (-20.0, 255)):
        paper = lineart_model.Generator()
        paper.load_state_dict(lineart.model.state_dict())
        with torch.no_grad():
            paper.model4[1].weight.zero_()
            paper.model4[1].bias.fill_(bias)
        assert (annotators.LineartDetector(paper, SMALL)(frames) == value).all()


def test_lineart_control_reaches_the_controlnet(base, controlnet, reference, plain_and_canny, lineart):  # noqa: F811
    small = dataclasses.replace(lineart, resolution=SMALL)
    control = ControlSpec(video=str(reference), type="lineart", source_frames=6)
    sample = SampleSpec(**SAMPLE, control=control)
    used = engine.sampling.reference_frames(sample, engine.sampling.resolve_sample(base, sample), small)
    np.testing.assert_array_equal(used["control"], small(conditioning.read_reference(reference, 4, 32, 32, total=6)))
    plain, canny = plain_and_canny
    controlled = render(base, sample, controlnet, small)
    zero = render(base, dataclasses.replace(sample, control=dataclasses.replace(control, scale=0.0)), controlnet,
                  small)
    assert controlled.shape == plain.shape == (4, 32, 32, 3)
    assert np.abs(controlled - plain).max() > 1e-3, "the lineart control changes the video"
    assert np.abs(controlled - canny).max() > 1e-3, "the lineart maps, not the edges, condition it"
    np.testing.assert_allclose(zero, plain, atol=1e-6)


def test_a_hub_id_reads_sk_model_pth_from_the_hugging_face_cache(base, lineart_dir, tmp_path):
    """`lllyasviel/Annotators` has no safetensors: offline, the cached sk_model.pth is found after it."""
    snapshot = tmp_path / "models--lllyasviel--Annotators" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "sk_model.pth").write_bytes((lineart_dir / "sk_model.pth").read_bytes())
    (tmp_path / "models--lllyasviel--Annotators" / "refs").mkdir()
    (tmp_path / "models--lllyasviel--Annotators" / "refs" / "main").write_text("0" * 40)
    offline = dataclasses.replace(base, spec=dataclasses.replace(base.spec, cache_dir=str(tmp_path),
                                                                 local_files_only=True))
    loaded = engine.load_annotator(offline, "lineart", "lllyasviel/Annotators").model.state_dict()
    saved = torch.load(lineart_dir / "sk_model.pth", weights_only=True)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    with pytest.raises(engine.ModelLoadError, match="none of sk_model.safetensors, sk_model.pth was found"):
        engine.load_annotator(offline, "lineart", "nobody/nothing")
