"""A customization's exports (`engine.exports`) outside the service: the diffusers LoRA in a plain
`AnimateDiffPipeline` samples the service's video, the kohya LoRA converts back to the same tensors with
diffusers' own kohya loader, and the ComfyUI workflow names the bundle's files."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_unet_state_dict_to_peft
from safetensors import safe_open
from safetensors.torch import load_file

import engine
from engine import adapters, comfyui, exports
from engine.checkpoints import file_sha256
from engine.progress import Reporter
from engine.sampling import render_frames
from engine.shapes.checkpoints import make_shapes_checkpoint

REPO = Path(__file__).resolve().parents[2]
FILE_INPUTS = ("ckpt_name", "lora_name", "unet_name", "model_name")
NODES = {"CheckpointLoaderSimple", "LoraLoader", "UNETLoader", "LoraLoaderModelOnly", "ADE_LoadAnimateDiffModel",
         "ADE_ApplyAnimateDiffModelSimple", "ADE_UseEvolvedSampling", "CLIPTextEncode", "EmptyLatentImage",
         "KSampler", "VAEDecode", "SaveAnimatedWEBP"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> engine.BaseModels:
    return engine.load_base_models(engine.ModelSpec(preset="shapes"), tmp_path_factory.mktemp("shapes"))


def _customize(base, root: Path, fmt: str, train_steps: int = 3):
    """A Still-Moving customization of the shapes world's DreamBooth checkpoint in upload format `fmt`, trained
    a few steps at a large learning rate so that its Spatial Adapter moves the video well past the comparison's
    tolerance. Returns (manifest, artifact directory, checkpoint)."""
    checkpoint = make_shapes_checkpoint(fmt, root / f"{fmt}.safetensors")
    train = engine.TrainSpec(prompts=("a sks red square moving right",), num_images=1, train_steps=train_steps,
                             rank=4, learning_rate=0.05, seed=3, use_motion_adapter=False, preview=False,
                             checkpoint_every=0)
    manifest = engine.customize(base, checkpoint, train, root / "cus", root / "motion")
    return manifest, root / "cus", checkpoint


@pytest.fixture(scope="module")
def customized(shapes, tmp_path_factory):
    return _customize(shapes, tmp_path_factory.mktemp("customized"), "lora")


def test_every_export_is_built_with_the_artifact_and_recorded(customized):
    manifest, directory, _ = customized
    assert set(manifest["exports"]) == set(exports.FORMATS) == {"diffusers", "kohya", "comfyui"}
    for entry in manifest["exports"].values():
        path = directory / entry["file"]
        assert path.stat().st_size == entry["size"] and file_sha256(path) == entry["sha256"]
    assert json.loads((directory / engine.MANIFEST_FILE).read_text())["exports"] == manifest["exports"]


def _readme_code(readme: str) -> str:
    return re.search(r"```python\n(.*?)```", readme, re.S).group(1)


def _readme_frames(customized, tmp_path: Path, monkeypatch, steps: int) -> tuple[np.ndarray, dict]:
    """Run the diffusers export's README as written (the paths of the user's files set, fewer steps for time):
    its frames and the settings it samples at."""
    manifest, directory, checkpoint = customized
    with zipfile.ZipFile(directory / manifest["exports"]["diffusers"]["file"]) as archive:
        archive.extractall(tmp_path / "export")
        readme = archive.read("README.md").decode()
    with safe_open(str(tmp_path / "export" / exports.DIFFUSERS_WEIGHTS), framework="pt") as handle:
        assert "lora_adapter_metadata" in handle.metadata()
        assert all(key.startswith("unet.") and ".lora_" in key for key in handle.keys())
    code = _readme_code(readme)
    code = re.sub(r"^CHECKPOINT = .*$", f"CHECKPOINT = {str(checkpoint)!r}", code, flags=re.M)
    code = re.sub(r"^EXPORT = .*$", f"EXPORT = {str(tmp_path / 'export')!r}", code, flags=re.M)
    code, replaced = re.subn(r"num_inference_steps=\d+", f"num_inference_steps={steps}", code)
    assert replaced == 1
    written = {}
    monkeypatch.setattr("diffusers.utils.export_to_video", lambda frames, path, fps: written.update(frames=frames))
    monkeypatch.chdir(REPO)  # the README names the shapes world's directories relative to the repository
    exec(compile(code, "README.md", "exec"), {})
    settings = dict(re.findall(r"(num_frames|height|width|num_inference_steps|guidance_scale)=([\d.]+)", code))
    return np.stack(written["frames"]), settings


def _compare_with_engine(base, customized, theirs: np.ndarray, settings: dict) -> tuple[float, float]:
    """(max |README frames - engine frames|, max |engine Still-Moving - engine naive|) at the README's settings."""
    manifest, directory, checkpoint = customized
    custom = engine.load_customization(base, directory, checkpoint)
    sample = engine.SampleSpec(prompt=manifest["settings"]["prompts"][0], seed=manifest["settings"]["seed"],
                               num_frames=int(settings["num_frames"]), height=int(settings["height"]),
                               width=int(settings["width"]), steps=int(settings["num_inference_steps"]),
                               guidance_scale=float(settings["guidance_scale"]))
    ours, method = render_frames(base, custom, sample, Reporter())
    naive, _ = render_frames(base, custom, replace(sample, method="naive"), Reporter())
    assert method == "still-moving" and theirs.shape == ours.shape == (8, 32, 32, 3)
    return float(np.abs(theirs - ours).max()), float(np.abs(naive - ours).max())


@pytest.mark.slow
def test_diffusers_export_in_a_plain_pipeline_samples_the_service_video(customized, shapes, tmp_path, monkeypatch):
    """The README's Python in a plain diffusers AnimateDiffPipeline against the engine at the same settings."""
    theirs, settings = _readme_frames(customized, tmp_path, monkeypatch, steps=10)
    gap, effect = _compare_with_engine(shapes, customized, theirs, settings)
    print(f"diffusers export vs engine: max |diff| {gap:.2e}; the adapter's effect {effect:.3f}")
    assert gap < 1e-3, gap
    assert effect > 50 * max(gap, 1e-4)  # the adapter matters: equality is no accident


@pytest.mark.heavy
@pytest.mark.parametrize("fmt", ["unet", "ldm"])
def test_diffusers_readme_loads_a_full_unet_or_single_file_checkpoint(fmt, shapes, tmp_path, monkeypatch):
    """The README's other ways to build the customized T2I (a full UNet, a single-file checkpoint)."""
    customized_ = _customize(shapes, tmp_path / "train", fmt, train_steps=2)
    theirs, settings = _readme_frames(customized_, tmp_path, monkeypatch, steps=4)
    gap, effect = _compare_with_engine(shapes, customized_, theirs, settings)
    print(f"{fmt}: max |diff| {gap:.2e}; the adapter's effect {effect:.3f}")
    assert gap < 1e-3 and effect > 50 * max(gap, 1e-4), (gap, effect)


def test_kohya_export_converts_back_to_the_adapter_with_diffusers_kohya_loader(customized):
    manifest, directory, _ = customized
    trained, config = adapters.read_adapter(directory / manifest["spatial_adapter"]["file"])
    kohya = load_file(str(directory / manifest["exports"]["kohya"]["file"]))
    assert all(re.fullmatch(r"lora_unet_\w+\.(lora_down\.weight|lora_up\.weight|alpha)", key) for key in kohya)
    state, alphas = StableDiffusionPipeline.lora_state_dict(kohya)  # diffusers' kohya -> diffusers conversion
    assert alphas and set(alphas.values()) == {float(config.lora_alpha)}
    back = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in state.items()})
    assert set(back) == set(trained)
    assert all(torch.equal(back[key], trained[key]) for key in trained)


def _file_inputs(workflow: dict) -> list[str]:
    return [value for node in workflow.values() for key, value in node["inputs"].items() if key in FILE_INPUTS]


def _check_graph(workflow: dict) -> None:
    assert {node["class_type"] for node in workflow.values()} <= NODES
    for node in workflow.values():
        for value in node["inputs"].values():
            if isinstance(value, list):  # a link: [node id, output index]
                assert value[0] in workflow and isinstance(value[1], int)


def test_comfyui_bundle_workflow_parses_and_names_the_bundle_files(customized):
    manifest, directory, _ = customized
    with zipfile.ZipFile(directory / manifest["exports"]["comfyui"]["file"]) as archive:
        names = set(archive.namelist())
        workflow = json.loads(archive.read(comfyui.WORKFLOW_FILE))
        models = {m["name"]: m for m in json.loads(archive.read(comfyui.MODELS_FILE))}
        bundled = {name: archive.read(f"{m['folder']}/{name}") for name, m in models.items() if m["in_bundle"]}
    _check_graph(workflow)
    used = _file_inputs(workflow)
    assert set(used) == set(models) and comfyui.MOTION_MODULE in used and comfyui.SD15_CHECKPOINT in used
    assert all(f"{m['folder']}/{name}" in names for name, m in models.items() if m["in_bundle"])
    assert list(bundled.values()) == [(directory / manifest["exports"]["kohya"]["file"]).read_bytes()]
    assert not any(name.startswith("stillmoving-customization") for name in bundled)  # the user's file stays theirs
    classes = [node["class_type"] for node in workflow.values()]
    assert {"LoraLoader", "LoraLoaderModelOnly", "ADE_UseEvolvedSampling", "SaveAnimatedWEBP"} <= set(classes)


@pytest.mark.parametrize("fmt,loader", [("unet", "UNETLoader"), ("ldm", None)])
def test_comfyui_workflow_loads_each_upload_format(fmt, loader):
    manifest = {"checkpoint": {"format": fmt, "sha256": "ab" * 32}, "spatial_adapter": {"sha256": "cd" * 32}}
    sample = {"prompt": "a sks dog", "seed": 1, "num_frames": 16, "height": 512, "width": 512, "steps": 25,
              "guidance_scale": 7.5}
    workflow, models = comfyui.workflow(manifest, sample, comfyui.file_names(manifest))
    _check_graph(workflow)
    assert set(_file_inputs(workflow)) == {m["name"] for m in models}
    checkpoints = [n["inputs"]["ckpt_name"] for n in workflow.values() if n["class_type"] == "CheckpointLoaderSimple"]
    own = comfyui.file_names(manifest)["checkpoint"]
    assert checkpoints == ([own] if fmt == "ldm" else [comfyui.SD15_CHECKPOINT])
    if loader:
        assert [n["inputs"]["unet_name"] for n in workflow.values() if n["class_type"] == loader] == [own]
