"""The `shapes` preset: committed diffusers directories loaded by the same `from_pretrained` code as `sd15`,
its customized checkpoints in every upload format, and the command that trains it all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import engine
from common.checkpoint_header import check_against_base, load_base_keys, parse_header
from engine.checkpoints import load_customized_t2i
from engine.shapes import dreambooth
from engine.shapes.checkpoints import make_shapes_checkpoint
from engine.shapes.paths import BASE_DIR, CUSTOMIZED_DIR, MOTION_DIR, ROOT

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> engine.BaseModels:
    return engine.load_base_models(engine.ModelSpec(preset="shapes"), tmp_path_factory.mktemp("shapes"))


def test_committed_directories_have_the_real_layouts():
    index = json.loads((BASE_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder"):
        assert (BASE_DIR / part / "config.json").exists() and list((BASE_DIR / part).glob("*.safetensors"))
    assert (BASE_DIR / "tokenizer" / "vocab.json").exists() and (BASE_DIR / "scheduler" / "scheduler_config.json").exists()
    assert (MOTION_DIR / "config.json").exists() and (MOTION_DIR / "diffusion_pytorch_model.safetensors").exists()
    weights = [p for p in ROOT.rglob("*") if p.is_file()]
    assert not [p for p in weights if p.suffix in (".bin", ".pt", ".ckpt", ".pkl")], "safetensors only"
    assert sum(p.stat().st_size for p in weights) <= 40 * 1024**2


def test_preset_loads_the_committed_weights_through_from_pretrained(shapes):
    committed = load_file(str(BASE_DIR / "unet" / "diffusion_pytorch_model.safetensors"))
    loaded = shapes.components["unet"].state_dict()
    assert set(committed) == set(loaded) and all(torch.equal(committed[k], loaded[k]) for k in committed)
    adapter = load_file(str(MOTION_DIR / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(adapter[k], v) for k, v in shapes.motion_adapter.state_dict().items())
    assert shapes.motion_adapter.config.motion_max_seq_length == 32
    assert type(shapes.components["tokenizer"]).__name__ == "CLIPTokenizer"
    identity = engine.ModelSpec(preset="shapes").identity()
    assert set(identity) == {"preset", "revision"} and len(identity["revision"]) == 16
    assert shapes.defaults.height == 32 and shapes.defaults.num_frames == 8


def test_a_copied_directory_loads_like_a_hub_id_and_names_itself(tmp_path):
    shutil.copytree(ROOT / "base", tmp_path / "base")
    shutil.copytree(ROOT / "motion-adapter", tmp_path / "motion")
    spec = engine.ModelSpec(preset="shapes", base_model=str(tmp_path / "base"), motion_adapter=str(tmp_path / "motion"))
    base = engine.load_base_models(spec, tmp_path / "work")
    committed = load_file(str(BASE_DIR / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(committed[k], v) for k, v in base.components["vae"].state_dict().items())
    assert spec.identity()["base_model"] == str(tmp_path / "base")
    spec_missing = engine.ModelSpec(preset="shapes", base_model=str(tmp_path / "nope"))
    with pytest.raises(engine.ModelLoadError, match="nope"):
        engine.load_base_models(spec_missing, tmp_path / "work2")


def test_key_manifests_are_what_the_command_generates():
    """`python -m scripts.base_keys` regenerates every committed manifest (sd15's from meta weights, ~1 s)."""
    from scripts.base_keys import PRESETS, manifest

    assert sorted(PRESETS) == sorted(p.stem for p in (REPO / "common" / "base_keys").glob("*.json"))
    for preset in PRESETS:
        committed = json.loads((REPO / "common" / "base_keys" / f"{preset}.json").read_text())
        assert committed == manifest(preset), preset


def test_customized_checkpoints_load_in_every_upload_format(shapes, tmp_path):

    unets = {}
    for fmt in ("lora", "lora-kohya", "unet", "ldm"):
        path = make_shapes_checkpoint(fmt, tmp_path / f"{fmt}.safetensors")
        head = path.read_bytes()
        summary = check_against_base(parse_header(head, len(head), 16 * 1024**2), load_base_keys("shapes"))
        assert summary.format == ("lora" if fmt.startswith("lora") else fmt)
        detected, components = load_customized_t2i(shapes.components, path, shapes.unet_config_dir)
        unets[fmt] = components["unet"].state_dict()
    base = shapes.components["unet"].state_dict()
    full = load_file(str(CUSTOMIZED_DIR / dreambooth.FULL_FILE))
    assert all(torch.equal(unets["unet"][k], full[k]) and torch.equal(unets["ldm"][k], full[k]) for k in full)
    changed = [k for k in base if not torch.equal(unets["lora"][k], base[k])]
    assert changed and all("attn" in k or "ff.net" in k for k in changed)
    assert max((unets["lora"][k] - unets["lora-kohya"][k]).abs().max().item() for k in base) < 1e-6


def test_a_lora_with_text_encoder_layers_passes_the_api_and_tunes_both_models(shapes):
    """The DreamBooth `--train_text_encoder` form of a LoRA (diffusers keys under unet. and text_encoder.)."""
    path = CUSTOMIZED_DIR / dreambooth.LORA_TEXT_FILE
    head = path.read_bytes()
    assert check_against_base(parse_header(head, len(head), 16 * 1024**2), load_base_keys("shapes")).format == "lora"
    _, components = load_customized_t2i(shapes.components, path, shapes.unet_config_dir)
    for part in ("unet", "text_encoder"):
        base, tuned = shapes.components[part].state_dict(), components[part].state_dict()
        changed = [k for k in base if not torch.equal(base[k], tuned[k])]
        assert changed and all(("attn" in k or "ff.net" in k) if part == "unet" else "self_attn" in k
                               for k in changed), (part, changed[:3])


@pytest.mark.slow
@pytest.mark.heavy
def test_the_world_build_command_runs_every_stage(tmp_path):
    """Each training stage for a few steps: the command keeps working (the real run is `make shapes-world`)."""
    out = tmp_path / "world"
    proc = subprocess.run([sys.executable, "-m", "engine.shapes.build", "--quick", "--threads", "1", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "build.json").read_text())
    assert set(report) == {"judge", "vae", "text", "unet", "motion", "customized", "controlnet"}
    assert [c["step"] for c in report["controlnet"]["iou_curve"]] == [0, 2, 4]
    assert sorted(p.name for p in (out / "controlnet-canny").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors"]
    spec = engine.ModelSpec(preset="shapes", base_model=str(out / "base"), motion_adapter=str(out / "motion-adapter"))
    base = engine.load_base_models(spec, tmp_path / "work")
    result = engine.generate(base, None, engine.SampleSpec(prompt="a red circle moving left", steps=2), tmp_path / "v")
    assert result["video"].exists() and result["num_frames"] == 8
    assert sorted(p.name for p in (out / "customized").iterdir()) == sorted(
        [dreambooth.FULL_FILE, dreambooth.LORA_FILE, dreambooth.LORA_NO_PRIOR_FILE, dreambooth.LORA_TEXT_FILE])


def test_the_shared_motion_adapter_trains_on_stills_of_the_presets_own_world(shapes, base):
    from engine.motion_adapter import motion_adapter_key, motion_prompts

    train = engine.TrainSpec(prompts=("a sks red circle",))
    assert motion_prompts(shapes, train) == tuple(f"a {c} {s}" for s in ("circle", "square", "triangle")
                                                  for c in ("red", "green", "blue", "yellow"))
    assert motion_prompts(base, train)[0] == "a photo of a person"  # tiny and sd15: generic photo prompts
    explicit = engine.TrainSpec(prompts=train.prompts, motion=engine.MotionAdapterSpec(prompts=("a red circle",)))
    assert motion_prompts(shapes, explicit) == ("a red circle",)
    assert motion_adapter_key(shapes, explicit) != motion_adapter_key(shapes, train)
    same = engine.TrainSpec(prompts=train.prompts,
                            motion=engine.MotionAdapterSpec(prompts=motion_prompts(shapes, train)))
    assert motion_adapter_key(shapes, same) == motion_adapter_key(shapes, train)
