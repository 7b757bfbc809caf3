"""AnimateDiff motion LoRAs (`engine.motion_loras`): the hub's file layout read by diffusers' own loader, a LoRA's
effect at scale (0 = as without), nothing left in the next request on the cached models, the Spatial Adapters and
the Motion Adapter combined with it, and the shapes world's committed LoRA end to end."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import engine
from common.presets import MOTION_LORAS, SHAPES_MOTION_LORA_RIGHT
from engine import adapters, motion_loras
from engine.progress import Reporter
from engine.sampling import render_frames

HUB_KEY = re.compile(r"^unet\.(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+\.transformer_blocks\.\d+"
                     r"\.attn[12]\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
SPEC = engine.SampleSpec(prompt="a toy", method="base", seed=4, num_frames=4, steps=2)


def random_lora(base, directory, seed: int = 0):
    """A random (non-zero) motion LoRA of `base`'s motion modules, saved in the hub layout; its peft tensors."""
    unet = base.base_motion_unet()
    adapters.add_adapter(unet, "x", adapters.motion_lora_config(4, init=False), seed=seed)
    state = adapters.adapter_state(unet, "x")
    motion_loras.save_motion_lora(state, directory)
    return state


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Sampling on one thread: on shared cores several threads cost many times more (measured 457 s against 13 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lora_dir(base, tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlora") / "motion-lora-test"
    random_lora(base, directory)
    return directory


def render(base, custom, spec, lora=None):
    return render_frames(base, custom, spec, Reporter(), motion_lora=lora)[0]


def test_saved_in_the_hub_layout_and_read_back_by_diffusers_loader(base, tmp_path):
    state = random_lora(base, tmp_path / "lora")
    files = sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert files == [motion_loras.WEIGHT_NAME] == ["diffusion_pytorch_model.safetensors"]
    saved = load_file(str(tmp_path / "lora" / motion_loras.WEIGHT_NAME))
    assert len(saved) == len(state) and all(HUB_KEY.match(k) for k in saved), sorted(saved)[:3]
    lora = engine.read_motion_lora(base, str(tmp_path / "lora"))  # diffusers' lora_state_dict
    unet = motion_loras.lora_unet(base)
    name = motion_loras.attach(base.components, unet, lora)  # diffusers' load_lora_weights
    attached = adapters.adapter_state(unet, name)
    assert set(attached) == set(state) and all(torch.equal(attached[k], state[k]) for k in state)
    assert unet.peft_config[name].r == 4 and unet.peft_config[name].lora_alpha == 4, "no alphas: scale 1"


def test_scale_changes_the_video_and_zero_equals_without(base, lora_dir):
    lora = engine.read_motion_lora(base, str(lora_dir))
    without = render(base, None, SPEC)
    spec = replace(SPEC, motion_lora=str(lora_dir))
    at_one = render(base, None, spec, lora)
    at_zero = render(base, None, replace(spec, motion_lora_scale=0.0), lora)
    at_minus = render(base, None, replace(spec, motion_lora_scale=-1.0), lora)
    assert np.abs(at_one - without).max() > 1e-3 and np.abs(at_minus - at_one).max() > 1e-3
    np.testing.assert_allclose(at_zero, without, atol=1e-6)
    read_here = render(base, None, spec)  # the engine reads it itself when not given
    np.testing.assert_array_equal(read_here, at_one)


def test_no_leak_into_the_next_request_on_the_cached_models(base, lora_dir, trained, checkpoints):
    lora = engine.read_motion_lora(base, str(lora_dir))
    custom = engine.load_customization(base, trained[1], checkpoints["lora"])
    spec_custom = replace(SPEC, method="still-moving", prompt="a sks toy")
    before = {"base": render(base, None, SPEC), "custom": render(base, custom, spec_custom),
              "naive": render(base, custom, replace(spec_custom, method="naive"))}
    with_lora = {"base": render(base, None, replace(SPEC, motion_lora=str(lora_dir)), lora),
                 "custom": render(base, custom, replace(spec_custom, motion_lora=str(lora_dir)), lora),
                 "naive": render(base, custom, replace(spec_custom, method="naive", motion_lora=str(lora_dir)), lora)}
    for key in before:
        assert np.abs(with_lora[key] - before[key]).max() > 1e-3, key
    after = {"base": render(base, None, SPEC), "custom": render(base, custom, spec_custom),
             "naive": render(base, custom, replace(spec_custom, method="naive"))}
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert lora.adapter_name in custom.unet.peft_config, "kept on the cached customization, inactive"
    assert not getattr(base.sampling_motion_unet(), "peft_config", None), "the shared base UNet stays plain"
    assert lora.adapter_name not in (getattr(base.base_motion_unet(), "peft_config", None) or {}), \
        "training copies of the base carry no motion LoRA"


def test_combined_with_the_spatial_and_motion_adapters_by_weight(base, lora_dir, trained, checkpoints):
    manifest, out_dir, motion_cache = trained
    motion_file = motion_cache / manifest["motion_adapter"]["key"] / engine.MOTION_ADAPTER_FILE
    custom = engine.load_customization(base, out_dir, checkpoints["lora"], motion_file)
    lora = engine.read_motion_lora(base, str(lora_dir))
    spec = replace(SPEC, method="still-moving", prompt="a sks toy", motion_adapter_scale=1.0)
    plain = render(base, custom, spec)
    combined = render(base, custom, replace(spec, motion_lora=str(lora_dir), motion_lora_scale=0.5), lora)
    active = custom.unet.active_adapters()
    assert set(active) == {adapters.SPATIAL, adapters.MOTION, lora.adapter_name}
    assert np.abs(combined - plain).max() > 1e-3
    at_zero = render(base, custom, replace(spec, motion_lora=str(lora_dir), motion_lora_scale=0.0), lora)
    np.testing.assert_allclose(at_zero, plain, atol=1e-6)


def test_refusals_name_the_field(base, lora_dir, tmp_path):
    lora = engine.read_motion_lora(base, str(lora_dir))
    with pytest.raises(engine.SpecError) as err:  # another LoRA than the spec names
        render(base, None, replace(SPEC, motion_lora="elsewhere"), lora)
    assert err.value.field == "motion_lora"
    with pytest.raises(engine.SpecError) as err:  # a LoRA with no spec naming it
        render(base, None, SPEC, lora)
    assert err.value.field == "motion_lora"
    spatial = tmp_path / "spatial"
    spatial.mkdir()
    saved = load_file(str(lora_dir / motion_loras.WEIGHT_NAME))
    save_file({**saved, "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight":
               next(iter(saved.values())).clone()}, str(spatial / motion_loras.WEIGHT_NAME))
    with pytest.raises(engine.ModelLoadError, match="outside the motion modules"):
        engine.read_motion_lora(base, str(spatial))
    wrong = tmp_path / "wrong-shape"
    wrong.mkdir()
    save_file({k: torch.zeros(v.shape[0], v.shape[1] + (".down." in k)) for k, v in saved.items()},
              str(wrong / motion_loras.WEIGHT_NAME))
    with pytest.raises(engine.SpecError, match="does not fit") as err:
        render(base, None, replace(SPEC, motion_lora=str(wrong)))
    assert err.value.field == "motion_lora"
    with pytest.raises(engine.ModelLoadError):
        engine.read_motion_lora(base, str(tmp_path / "absent"))


# ---- the shapes world's committed motion LoRA ---------------------------------------------------------
def test_the_committed_shapes_lora_is_small_in_the_hub_layout_and_served():
    assert MOTION_LORAS["shapes"] == (str(SHAPES_MOTION_LORA_RIGHT),) and MOTION_LORAS["tiny"] == ()
    assert len(MOTION_LORAS["sd15"]) == 8 and all(s.startswith("guoyww/animatediff-motion-lora-")
                                                    for s in MOTION_LORAS["sd15"])
    path = SHAPES_MOTION_LORA_RIGHT / motion_loras.WEIGHT_NAME
    assert sorted(p.name for p in SHAPES_MOTION_LORA_RIGHT.iterdir()) == [motion_loras.WEIGHT_NAME]
    assert path.stat().st_size < 1024**2
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
        assert all(handle.get_tensor(k).dtype == torch.float32 for k in keys)
    assert keys and all(HUB_KEY.match(k) for k in keys)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> engine.BaseModels:
    return engine.load_base_models(engine.ModelSpec(preset="shapes"), tmp_path_factory.mktemp("shapes"))


def test_shapes_generate_with_the_committed_lora_end_to_end(shapes, tmp_path):
    """`engine.generate` on the shapes preset naming the committed LoRA: every tensor of the file lands on a motion
    module through diffusers' loader, the video is written and records it, and it moves differently."""
    source = str(SHAPES_MOTION_LORA_RIGHT)
    spec = engine.SampleSpec(prompt="a red square", method="base", steps=6, seed=3, format="gif")
    out = engine.generate(shapes, None, replace(spec, motion_lora=source), tmp_path / "with")
    assert out["motion_lora"] == source and out["motion_lora_scale"] == 1.0 and out["video"].exists()
    lora = engine.read_motion_lora(shapes, source)
    attached = adapters.adapter_state(motion_loras.lora_unet(shapes), lora.adapter_name)
    assert len(attached) == len(lora.state_dict)
    plain = engine.generate(shapes, None, spec, tmp_path / "without")
    assert "motion_lora" not in plain
    import imageio.v3 as iio

    with_frames, without_frames = (np.asarray(iio.imread(o["video"], index=None))[..., :3].astype(int)
                                   for o in (out, plain))
    assert np.abs(with_frames - without_frames).max() > 12, "the committed LoRA is not a no-op"


def test_the_training_script_runs_a_few_steps_and_saves_the_hub_layout(shapes, tmp_path):
    from engine.shapes import train_motion_lora

    frozen = {k: v.clone() for k, v in shapes.sampling_motion_unet().state_dict().items()}
    state, record = train_motion_lora.train(shapes, steps=2, num_videos=8)
    assert record["steps"] == 2 and record["timesteps"] == [400, 1000]
    assert all(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k), "B moved off its zero init"
    path = motion_loras.save_motion_lora(state, tmp_path / "lora")
    assert all(HUB_KEY.match(k) for k in load_file(str(path)))
    assert len(engine.read_motion_lora(shapes, str(tmp_path / "lora")).state_dict) == len(state)
    after = shapes.sampling_motion_unet().state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items()), "the base T2V stays as it was"


def test_a_long_video_in_freenoise_windows_takes_the_lora_and_leaves_none_behind(shapes):
    spec = engine.SampleSpec(prompt="a red square", method="base", steps=3, seed=1, num_frames=24, context_length=16,
                             context_stride=4)
    plain = render(shapes, None, spec)
    with_lora = render(shapes, None, replace(spec, motion_lora=str(SHAPES_MOTION_LORA_RIGHT)))
    assert with_lora.shape == (24, 32, 32, 3) and np.abs(with_lora - plain).max() > 0.05
    np.testing.assert_array_equal(render(shapes, None, spec), plain)
