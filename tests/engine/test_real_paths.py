"""The paths real users run: SD 1.5 / AnimateDiff loaded with `from_pretrained` from local directories,
and (slow) the real-size SD 1.5 architecture: adapter targets and single-file conversion."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

import engine
from engine import adapters
from engine.progress import Reporter
from engine.sampling import render_frames
from engine.tiny_models import build_tiny_components, build_tiny_motion_adapter


def test_sd15_preset_loads_local_diffusers_directories_like_hub_ids(base, tmp_path):
    components = build_tiny_components(tmp_path / "build")
    StableDiffusionPipeline(**components).save_pretrained(tmp_path / "sd")
    build_tiny_motion_adapter().save_pretrained(tmp_path / "motion")
    spec = engine.ModelSpec(preset="sd15", base_model=str(tmp_path / "sd"), motion_adapter=str(tmp_path / "motion"),
                            local_files_only=True)
    loaded = engine.load_base_models(spec, tmp_path / "work")
    assert loaded.spec.identity()["base_model"] == str(tmp_path / "sd")
    sample = engine.SampleSpec(prompt="a dog", num_frames=4, height=32, width=32, steps=2, seed=3, method="base")
    a, _ = render_frames(loaded, None, sample, Reporter())
    b, _ = render_frames(base, None, sample, Reporter())
    assert (a == b).all()


def test_missing_local_model_is_a_clear_error(tmp_path):
    spec = engine.ModelSpec(preset="sd15", base_model=str(tmp_path / "nope"), local_files_only=True)
    with pytest.raises(engine.ModelLoadError, match="nope"):
        engine.load_base_models(spec, tmp_path / "work")


@pytest.mark.slow
@pytest.mark.heavy
def test_real_size_sd15_adapter_targets_and_single_file_conversion(tmp_path):
    import json

    from engine.checkpoint_formats import diffusers_unet_to_ldm
    from engine.checkpoints import _load_ldm
    from engine.models import PRESET_DEFAULTS, BaseModels, build_motion_unet
    from engine.real_size import build_sd15, load_config

    modules = build_sd15()
    unet2d = modules["unet"]
    assert sum(p.numel() for p in unet2d.parameters()) == 859_520_964
    config_dir = tmp_path / "unet"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps(load_config("unet")))

    ldm = diffusers_unet_to_ldm(unet2d.state_dict(), 2)
    assert "model.diffusion_model.input_blocks.1.1.proj_in.weight" in ldm
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm
    torch.manual_seed(1)  # a UNet of other weights (build_sd15(seed=1)'s, without its VAE, text encoder, motion adapter)
    target = UNet2DConditionModel(**load_config("unet"))
    _load_ldm(target, modules["text_encoder"], ldm, config_dir)
    ref = unet2d.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in target.state_dict().items())
    del target, ldm

    fake = BaseModels(engine.ModelSpec(preset="sd15"), torch.device("cpu"), torch.float32, {},
                      modules["motion_adapter"], config_dir, PRESET_DEFAULTS["sd15"], tmp_path)
    unet = build_motion_unet(fake, unet2d)
    adapters.add_adapter(unet, adapters.MOTION, adapters.motion_lora_config(16))
    adapters.add_adapter(unet, adapters.SPATIAL, adapters.spatial_lora_config(16))
    motion = {n.split(".lora_")[0] for n, _ in unet.named_parameters() if ".motion." in n}
    spatial = {n.split(".lora_")[0] for n, _ in unet.named_parameters() if ".spatial." in n}
    # 21 motion modules (down 4x2, mid 1, up 4x3) and 16 SD transformer blocks, x 2 attentions x 4 projections
    assert len(motion) == 21 * 8
    assert len(spatial) == 16 * 8
    size = sum(p.numel() for n, p in unet.named_parameters() if ".spatial." in n)
    assert 1e6 < size * 2 < 20e6  # "a few MB" in fp16
