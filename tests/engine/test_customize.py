"""The customization recipe end to end: artifact, Motion Adapter cache, progress, cancel, resume."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import engine
from engine.checkpoints import file_sha256
from engine.motion_adapter import motion_adapter_key

from .conftest import small_train


def test_artifact_has_everything_needed_to_regenerate(trained, checkpoints):
    manifest, out_dir, _ = trained
    on_disk = json.loads((out_dir / "manifest.json").read_text())
    assert on_disk["checkpoint"] == {"sha256": file_sha256(checkpoints["lora"]), "format": "lora"}
    assert on_disk["model"] == {"preset": "tiny"}
    assert on_disk["settings"]["prompts"] == ["a sks toy", "a sks toy on a table"]
    assert [i["seed"] for i in on_disk["images"]] == [0, 1]
    assert all((out_dir / i["file"]).exists() for i in on_disk["images"])
    assert len(on_disk["loss_curve"]) == 4 and all(v > 0 for v in on_disk["loss_curve"])
    assert (out_dir / "preview.mp4").stat().st_size > 0 and (out_dir / "preview.png").exists()
    assert on_disk["spatial_adapter"]["sha256"] == file_sha256(out_dir / "spatial_adapter.safetensors")
    assert set(on_disk["versions"]) >= {"torch", "diffusers", "peft"}
    keys = load_file(str(out_dir / "spatial_adapter.safetensors"))
    assert keys and all("lora_" in k and "motion_modules" not in k for k in keys)
    assert manifest["motion_adapter"]["used"] is True


def test_motion_adapter_is_trained_once_per_base(base, checkpoints, tmp_path):
    train = small_train()
    first = engine.customize(base, checkpoints["unet"], train, tmp_path / "a", tmp_path / "motion")
    second = engine.customize(base, checkpoints["ldm"], train, tmp_path / "b", tmp_path / "motion")
    key = motion_adapter_key(base, train)
    prompts = list(engine.specs.GENERIC_MOTION_PROMPTS)  # the tiny preset's generic prompts
    expected = {"used": True, "source": "shared", "key": key, "file": None, "prompts": prompts}
    assert {k: first["motion_adapter"][k] for k in expected} == expected
    assert {k: second["motion_adapter"][k] for k in expected} == expected
    # its training's loss curve, one value a step, recorded in the manifests of both (the second from the cache)
    assert len(first["motion_adapter"]["loss_curve"]) == train.motion.train_steps
    assert second["motion_adapter"]["loss_curve"] == first["motion_adapter"]["loss_curve"]
    assert first["motion_adapter"]["trained_now"] is True and second["motion_adapter"]["trained_now"] is False
    assert (tmp_path / "motion" / key / "motion_adapter.safetensors").exists()
    other = small_train(motion=engine.MotionAdapterSpec(train_steps=2, num_images=2, rank=4))
    assert motion_adapter_key(base, other) != key


def test_without_motion_adapter_trains_differently(base, checkpoints, tmp_path):
    with_ma = engine.customize(base, checkpoints["unet"], small_train(), tmp_path / "a", tmp_path / "m")
    without = engine.customize(base, checkpoints["unet"], small_train(use_motion_adapter=False), tmp_path / "b",
                               tmp_path / "m2")
    assert with_ma["motion_adapter"]["used"] is True and without["motion_adapter"]["used"] is False
    assert not (tmp_path / "m2").exists()
    a, b = (load_file(str(tmp_path / d / "spatial_adapter.safetensors")) for d in ("a", "b"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_progress_reports_every_stage_and_cancel_stops_between_steps(base, checkpoints, tmp_path):
    seen = []
    engine.customize(base, checkpoints["unet"], small_train(), tmp_path / "a", tmp_path / "m",
                     progress=lambda s, i, n: seen.append((s, i, n)))
    stages = [s for s, _, _ in seen]
    for stage in ("load", "motion_adapter", "sample_images", "train", "done"):
        assert stage in stages
    assert ("train", 4, 4) in seen

    calls = []

    def cancel_at_train_step_2(stage, step, total):
        calls.append((stage, step))

    with pytest.raises(engine.CancelledError):
        engine.customize(base, checkpoints["unet"], small_train(train_steps=50), tmp_path / "b", tmp_path / "m",
                         progress=cancel_at_train_step_2, should_cancel=lambda: ("train", 2) in calls)
    assert calls[-1] == ("train", 2)
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_resumed_training_matches_an_uninterrupted_run(base, checkpoints, tmp_path):
    train = small_train(train_steps=6, checkpoint_every=2)
    full = engine.customize(base, checkpoints["unet"], train, tmp_path / "full", tmp_path / "m")
    saves = []
    with pytest.raises(engine.CancelledError):
        engine.customize(base, checkpoints["unet"], train, tmp_path / "cut", tmp_path / "m",
                         state_dir=tmp_path / "state", on_checkpoint=saves.append,
                         progress=lambda s, i, n: None,
                         should_cancel=lambda: len(saves) == 2)
    assert json.loads((tmp_path / "state" / "state.json").read_text())["step"] == 4
    resumed = engine.customize(base, checkpoints["unet"], train, tmp_path / "cut", tmp_path / "m",
                               state_dir=tmp_path / "state")
    assert resumed["resumed_from_step"] == 4
    assert resumed["loss_curve"] == full["loss_curve"]
    a = load_file(str(tmp_path / "full" / "spatial_adapter.safetensors"))
    b = load_file(str(tmp_path / "cut" / "spatial_adapter.safetensors"))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_suspended_training_saves_the_step_it_is_at_and_resumes_from_it(base, checkpoints, tmp_path):
    """Suspended (its worker shuts down) after step 3 of 6, no periodic state due: the state of step 3 is saved
    first; a run from it matches an uninterrupted one. Suspended before training: no state, nothing saved."""
    train = small_train(train_steps=6, checkpoint_every=1000)
    full = engine.customize(base, checkpoints["unet"], train, tmp_path / "full", tmp_path / "m")
    seen, saves = [], []
    with pytest.raises(engine.SuspendedError, match="suspended at train step 3/6, its resume state saved"):
        engine.customize(base, checkpoints["unet"], train, tmp_path / "cut", tmp_path / "m",
                         state_dir=tmp_path / "state", on_checkpoint=saves.append,
                         progress=lambda s, i, n: seen.append((s, i)), should_suspend=lambda: ("train", 3) in seen)
    assert seen[-1] == ("train", 3) and saves == [tmp_path / "state"]
    assert json.loads((tmp_path / "state" / "state.json").read_text())["step"] == 3
    resumed = engine.customize(base, checkpoints["unet"], train, tmp_path / "cut", tmp_path / "m",
                               state_dir=tmp_path / "state")
    assert resumed["resumed_from_step"] == 3 and resumed["loss_curve"] == full["loss_curve"]
    assert resumed["spatial_adapter"]["sha256"] == full["spatial_adapter"]["sha256"]

    with pytest.raises(engine.SuspendedError, match="suspended at (motion_adapter|sample_images) step 1/"):
        engine.customize(base, checkpoints["unet"], train, tmp_path / "early", tmp_path / "m",
                         state_dir=tmp_path / "early-state", on_checkpoint=saves.append,
                         progress=lambda s, i, n: seen.append((s, i)), should_suspend=lambda: seen[-1][0] != "load")
    assert len(saves) == 1 and not (tmp_path / "early-state" / "state.json").exists()


def test_same_settings_train_the_same_adapter(base, checkpoints, tmp_path):
    runs = [engine.customize(base, checkpoints["unet"], small_train(), tmp_path / d, tmp_path / "m")
            for d in ("a", "b")]
    assert runs[0]["loss_curve"] == runs[1]["loss_curve"]
    assert runs[0]["spatial_adapter"]["sha256"] == runs[1]["spatial_adapter"]["sha256"]
    other = engine.customize(base, checkpoints["unet"], small_train(seed=7), tmp_path / "c", tmp_path / "m")
    assert other["spatial_adapter"]["sha256"] != runs[0]["spatial_adapter"]["sha256"]


@pytest.mark.parametrize("field,value", [("num_images", 0), ("train_steps", 0), ("rank", 0),
                                         ("learning_rate", 0.0), ("height", 36), ("prompts", ("",)),
                                         ("num_frames", 33)])  # over the motion modules' 32 positions
def test_bad_settings_name_the_field(base, checkpoints, tmp_path, field, value):
    with pytest.raises(engine.SpecError) as info:
        engine.customize(base, checkpoints["unet"], small_train(**{field: value}), tmp_path / "x", tmp_path / "m")
    assert info.value.field == field and field in str(info.value)


def test_customization_refuses_a_different_checkpoint(base, trained, checkpoints):
    with pytest.raises(engine.CheckpointError, match="sha256"):
        engine.load_customization(base, trained[1], checkpoints["unet"])


def test_motion_adapter_key_changes_with_how_its_stills_are_made(base):
    """The stills' sampling steps and guidance shape the adapter: two such settings never share one."""
    train = small_train()
    key = motion_adapter_key(base, train)
    assert motion_adapter_key(base, small_train(image_steps=7)) != key
    assert motion_adapter_key(base, small_train(image_guidance_scale=3.0)) != key
    assert motion_adapter_key(base, small_train(num_frames=6)) != key
    assert motion_adapter_key(base, small_train(image_batch_size=2)) != key
    assert motion_adapter_key(base, small_train(prompts=("another prompt",), train_steps=9)) == key


def test_a_motion_adapter_of_its_own_lives_in_the_artifact_and_is_checked(base, checkpoints, tmp_path):
    """source="customized": trained over the customized spatial layers on its frozen videos, never cached; the
    manifest records the motion at scale 1 and 0; a reload samples at scale 1 without being told the file."""
    from engine.progress import Reporter
    from engine.sampling import render_frames

    manifest = engine.customize(base, checkpoints["lora"], small_train(motion_adapter_source="customized"),
                                tmp_path / "own", tmp_path / "cache")
    motion = manifest["motion_adapter"]
    assert motion["source"] == "customized" and motion["key"] is None and motion["trained_now"] is True
    assert motion["file"] == "motion_adapter.safetensors" and (tmp_path / "own" / motion["file"]).exists()
    assert not (tmp_path / "cache").exists(), "nothing shared was trained"
    assert motion["prompts"] == list(small_train().prompts)
    check = motion["check"]
    assert check["prompt"] == small_train().prompts[0] and check["motion_at_scale_1"] >= 0
    assert check["motion_at_scale_1"] != check["motion_at_scale_0"]
    custom = engine.load_customization(base, tmp_path / "own", checkpoints["lora"])
    spec = engine.SampleSpec(prompt="a sks toy", seed=2, num_frames=4, steps=2)
    at_zero, _ = render_frames(base, custom, spec, Reporter())
    at_one, _ = render_frames(base, custom, replace(spec, motion_adapter_scale=1.0), Reporter())
    assert not (at_zero == at_one).all()
    shared = engine.customize(base, checkpoints["lora"], small_train(), tmp_path / "shared", tmp_path / "cache")
    assert shared["motion_adapter"]["source"] == "shared" and shared["motion_adapter"]["file"] is None
    assert shared["motion_adapter"]["check"]["motion_at_scale_1"] >= 0


def test_prior_preservation_trains_base_stills_alongside(base, checkpoints, tmp_path):
    """With a weight, the loss adds frozen videos of base-T2I stills of the generic prompts: the loss curve and
    the adapter change; the manifest names the prior stills (prompt, seed)."""
    plain = engine.customize(base, checkpoints["lora"], small_train(), tmp_path / "a", tmp_path / "m")
    kept = engine.customize(base, checkpoints["lora"], small_train(prior_preservation_weight=1.0, prior_num_images=3),
                            tmp_path / "b", tmp_path / "m")
    assert plain["prior_preservation"] is None
    prior = kept["prior_preservation"]
    assert prior["weight"] == 1.0 and [i["seed"] for i in prior["images"]] == [2, 3, 4]
    assert [i["prompt"] for i in prior["images"]] == list(engine.specs.GENERIC_MOTION_PROMPTS[:3])
    assert kept["loss_curve"][0] > plain["loss_curve"][0], "step 0 (same draws, same zero-init adapter) + prior term"
    a, b = (load_file(str(tmp_path / d / "spatial_adapter.safetensors")) for d in ("a", "b"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(engine.SpecError) as err:
        engine.customize(base, checkpoints["lora"], small_train(prior_preservation_weight=-1.0), tmp_path / "c",
                         tmp_path / "m")
    assert err.value.field == "prior_preservation_weight"


def _corrupt_copy(out_dir, tmp_path, how: str):
    import shutil

    from safetensors.torch import save_file

    copy = tmp_path / "cust"
    shutil.copytree(out_dir, copy)
    path = copy / engine.SPATIAL_ADAPTER_FILE
    if how == "garbage":
        path.write_bytes(b"\x00\x01not safetensors" * 64)
    elif how == "no lora_config":
        save_file(load_file(str(path)), str(path))
    elif how == "keys the model lacks":
        tensors = load_file(str(path))
        save_file({k.replace("attn1", "attn9"): v for k, v in tensors.items()}, str(path),
                  metadata={"lora_config": json.dumps({"r": 4, "lora_alpha": 4, "target_modules": ["to_q"]})})
    return copy


@pytest.mark.parametrize("how, fragment", [("garbage", "not a readable safetensors file"),
                                           ("no lora_config", "no lora_config"),
                                           ("keys the model lacks", "keys this model lacks")])
def test_a_corrupt_adapter_file_is_an_engine_error_naming_the_file(base, checkpoints, trained, tmp_path, how,
                                                                   fragment):
    """Regression: it was a bare ValueError or KeyError (reported as an internal error); now `AdapterError`."""
    _, out_dir, _ = trained
    directory = _corrupt_copy(out_dir, tmp_path, how)
    with pytest.raises(engine.AdapterError) as info:
        engine.load_customization(base, directory, checkpoints["lora"])
    assert info.value.code == "invalid_adapter" and isinstance(info.value, engine.EngineError)
    assert fragment in info.value.message and engine.SPATIAL_ADAPTER_FILE in info.value.message
