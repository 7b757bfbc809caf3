"""The per-preset fact table (`common.presets`): it agrees with the weights, admits its own defaults, and
refuses what a preset cannot run (frame positions, training sizes, cost) naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import InvalidArgument
from common.presets import PRESETS, check_customization, check_video, train_work, video_work
from common.schemas import CustomizationConfig

ROOT = Path(__file__).resolve().parents[2]


def test_frame_positions_are_those_of_each_presets_motion_adapter():
    from engine.tiny_models import MOTION_CONFIG

    shapes = json.loads((ROOT / "models/shapes/motion-adapter/config.json").read_text())
    sd15 = json.loads((ROOT / "engine/configs/sd15/motion_adapter.json").read_text())
    assert PRESETS["tiny"].max_frames == MOTION_CONFIG["motion_max_seq_length"]
    assert PRESETS["shapes"].max_frames == shapes["motion_max_seq_length"]
    assert PRESETS["sd15"].max_frames == sd15["motion_max_seq_length"]


def test_the_engine_defaults_are_the_presets():
    from engine.models import PRESET_DEFAULTS

    for name, preset in PRESETS.items():
        d = PRESET_DEFAULTS[name]
        assert (d.height, d.width, d.num_frames, d.image_steps, d.sample_steps) == (
            preset.height, preset.width, preset.num_frames, preset.image_steps, preset.sample_steps)
        assert d.fill(num_frames=None, height=12, steps=None, image_steps=None) == {
            "num_frames": preset.num_frames, "height": 12, "steps": preset.sample_steps,
            "image_steps": preset.image_steps}


def test_the_worker_builds_engine_specs_from_the_api_schemas_own_defaults():
    """One defaults story: None = the preset's, the schema's defaults for the rest, no second copy in the worker."""
    import dataclasses

    import engine
    from common.schemas import GenerateRequest
    from common.settings import Settings
    from worker.runner import sample_spec, train_spec

    train = train_spec({"prompts": ["a sks dog"]}, Settings(_env_file=None))
    config = CustomizationConfig(prompts=["a sks dog"])
    spec_names = {f.name for f in dataclasses.fields(engine.TrainSpec)}
    webhooks = {"webhook", "webhook_events_filter"}  # delivered by the worker's webhook thread, not the engine
    api_only = {"base_model", "name"} | webhooks  # chosen by the API, not the engine
    assert set(CustomizationConfig.model_fields) - spec_names == api_only  # none dropped on the way
    for name in set(CustomizationConfig.model_fields) - api_only:
        assert getattr(train, name) == (tuple(config.prompts) if name == "prompts" else getattr(config, name)), name
    assert train.num_frames is None and train.height is None  # the engine fills the preset's, as the API did
    sample = sample_spec({"prompt": "a red circle", "seed": 5})
    assert set(GenerateRequest.model_fields) - {f.name for f in dataclasses.fields(engine.SampleSpec)} == {
        "customization_id"} | webhooks
    assert (sample.steps, sample.method, sample.scheduler, sample.fps) == (None, "base", "ddim", 8)
    with pytest.raises(ValueError):
        sample_spec({"prompt": "x", "seed": 1, "steps": 0})  # the worker validates as the API does


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_admits_its_default_jobs(name):
    preset = PRESETS[name]
    check_video(preset, None, None, None, None)
    check_customization(preset, CustomizationConfig(prompts=["a sks dog"]).model_dump())
    check_customization(preset, CustomizationConfig(prompts=["x"], prior_preservation_weight=1.0).model_dump())
    assert video_work(preset.num_frames, preset.height, preset.width, preset.sample_steps) < preset.max_video_work


def test_sd15_limits_refuse_the_attack_and_fit_the_largest_video():
    sd15 = PRESETS["sd15"]
    check_video(sd15, 32, 512, 512, 100)
    with pytest.raises(InvalidArgument) as err:
        check_video(sd15, 32, 1024, 1024, 150)
    # each of frames, height and width is twice its default: the first of them is named
    assert err.value.field == "num_frames" and str(sd15.max_video_pixels) in err.value.message
    with pytest.raises(InvalidArgument) as err:
        check_video(sd15, 32, 512, 512, 101)
    assert err.value.field == "steps"


def test_shapes_trains_at_its_one_size_only():
    config = CustomizationConfig(prompts=["a sks red circle"]).model_dump()
    for change, field in [({"height": 64, "width": 64}, "config.height"), ({"num_frames": 16}, "config.num_frames"),
                          ({"width": 48}, "config.width")]:
        with pytest.raises(InvalidArgument) as err:
            check_customization(PRESETS["shapes"], {**config, **change})
        assert err.value.field == field and "32x32x8 only" in err.value.message
    check_customization(PRESETS["shapes"], {**config, "height": 32, "width": 32, "num_frames": 8})


def test_training_cost_counts_stills_prior_and_steps():
    assert train_work(images=2, image_steps=3, steps=0, frames=8, height=4, width=4) == 2 * 3 * 16
    assert train_work(images=0, image_steps=3, steps=5, frames=8, height=4, width=4) == 3 * 5 * 8 * 16
    # a prior batch rides along each step, and its stills are made too
    assert train_work(images=0, image_steps=3, steps=5, frames=8, height=4, width=4, prior_images=1) == \
        3 * 16 + 2 * 3 * 5 * 8 * 16
    preset = PRESETS["sd15"]
    base = CustomizationConfig(prompts=["x"], train_steps=2000, num_images=200).model_dump()
    check_customization(preset, base)
    with pytest.raises(InvalidArgument) as err:
        check_customization(preset, {**base, "train_steps": 2500})
    assert err.value.field == "config.train_steps" and str(preset.max_train_work) in err.value.message
