"""The checks method.md says must hold, on the tiny base."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch

import engine
from engine import adapters, frozen_videos
from engine.checkpoints import load_customized_t2i
from engine.models import build_motion_unet, make_training_scheduler
from engine.progress import Reporter
from engine.training import TrainData, train_adapter

from .conftest import forward, unet_inputs


@pytest.fixture()
def customized(base, checkpoints):
    return load_customized_t2i(base.components, checkpoints["unet"], base.unet_config_dir)[1]


def _motion_outputs(unet):
    """Output of every motion module's last projection for one forward (hooks)."""
    outs, hooks = {}, []
    for name, module in unet.named_modules():
        if re.fullmatch(r".*motion_modules\.\d+\.proj_out", name):
            hooks.append(module.register_forward_hook(lambda m, i, o, n=name: outs.__setitem__(n, o.clone())))
    forward(unet, unet_inputs(unet))
    for h in hooks:
        h.remove()
    return outs


def test_zero_initialised_spatial_adapter_equals_naive_injection(base, customized):
    unet = build_motion_unet(base, customized["unet"])
    naive = forward(unet, unet_inputs(unet))
    adapters.add_adapter(unet, adapters.SPATIAL, adapters.spatial_lora_config(4, resnets=True, projections=True))
    assert torch.equal(forward(unet, unet_inputs(unet)), naive)


def test_motion_adapter_at_scale_zero_or_removed_is_bit_identical_to_base(base):
    unet = base.base_motion_unet()
    reference = _motion_outputs(unet)
    assert len(reference) >= 4
    adapters.add_adapter(unet, adapters.MOTION, adapters.motion_lora_config(4, init=False))
    changed = _motion_outputs(unet)
    assert any(not torch.equal(changed[k], reference[k]) for k in reference)
    adapters.activate(unet, [adapters.MOTION], [0.0])
    assert all(torch.equal(v, reference[k]) for k, v in _motion_outputs(unet).items())
    unet.delete_adapters(adapters.MOTION)
    assert all(torch.equal(v, reference[k]) for k, v in _motion_outputs(unet).items())


def test_adapters_target_exactly_the_documented_modules(base):
    unet = base.base_motion_unet()
    adapters.add_adapter(unet, adapters.MOTION, adapters.motion_lora_config(4))
    adapters.add_adapter(unet, adapters.SPATIAL, adapters.spatial_lora_config(4))
    motion = {n.rsplit(".lora_", 1)[0] for n, _ in unet.named_parameters() if ".motion." in n}
    spatial = {n.rsplit(".lora_", 1)[0] for n, _ in unet.named_parameters() if ".spatial." in n}
    projections = ("to_q", "to_k", "to_v", "to_out.0")
    expected_motion = {n for n, _ in base.base_motion_unet().named_modules()
                       if "motion_modules" in n and ".attn" in n and n.endswith(projections)}
    expected_spatial = {n for n, _ in base.base_motion_unet().named_modules()
                        if ".attentions." in n and ".attn" in n and n.endswith(projections)}
    assert {m.split(".lora_")[0] for m in spatial} == expected_spatial
    assert {m.split(".lora_")[0] for m in motion} == expected_motion
    assert not expected_motion & expected_spatial


def test_wider_spatial_adapters_add_exactly_their_modules(base):
    unet = base.base_motion_unet()
    adapters.add_adapter(unet, adapters.SPATIAL, adapters.spatial_lora_config(4, resnets=True, projections=True,
                                                                              feedforward=True))
    got = {n.rsplit(".lora_", 1)[0] for n, _ in unet.named_parameters() if ".spatial." in n}
    modules = [n for n, _ in base.base_motion_unet().named_modules() if "motion_modules" not in n]
    expected = {n for n in modules if ".attentions." in n and ".attn" in n
                and n.endswith(("to_q", "to_k", "to_v", "to_out.0"))}
    expected |= {n for n in modules if ".resnets." in n and n.endswith((".conv1", ".conv2"))}
    expected |= {n for n in modules if ".attentions." in n and n.endswith((".proj_in", ".proj_out"))
                 and ".transformer_blocks." not in n}
    expected |= {n for n in modules if ".attentions." in n and n.endswith((".ff.net.0.proj", ".ff.net.2"))}
    assert got == expected


def test_training_changes_only_spatial_adapter_tensors(base, customized):
    unet = build_motion_unet(base, customized["unet"])
    adapters.add_adapter(unet, adapters.MOTION, adapters.motion_lora_config(4, init=False))
    adapters.add_adapter(unet, adapters.SPATIAL, adapters.spatial_lora_config(4))
    adapters.activate(unet, [adapters.MOTION, adapters.SPATIAL])
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    custom_before = {k: v.clone() for k, v in customized["unet"].state_dict().items()}
    latents = torch.randn(2, 4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    data = TrainData(latents=latents, embeddings=torch.randn(2, 77, unet.config.cross_attention_dim))
    result = train_adapter(unet, adapters.SPATIAL, data, make_training_scheduler(base), 3, 1e-2, 1, 0,
                           Reporter(), "train")
    after = unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    spatial_keys = {k for k in before if "lora_" in k and ".spatial." in k}
    assert spatial_keys and changed == spatial_keys  # every Spatial Adapter tensor trained, nothing else
    assert len(result.losses) == 3
    assert all(torch.equal(custom_before[k], v) for k, v in customized["unet"].state_dict().items())
    assert not any(p.requires_grad for p in unet.parameters())


def test_frozen_video_frames_are_identical_and_latent_is_repeated(base):
    stills = frozen_videos.sample_stills(base.components, ("a cat",), 2, 0, 32, 32, 2, 7.5, "", Reporter())
    latents = frozen_videos.encode_images(base.components["vae"], stills.images)
    video = frozen_videos.freeze(latents, 5)
    assert video.shape == (2, 4, 5, 16, 16)
    for f in range(5):
        assert torch.equal(video[:, :, f], latents)
    assert stills.seeds == [0, 1] and stills.prompts == ["a cat", "a cat"]
    assert not torch.equal(latents[0], latents[1])


def test_stills_sampled_in_batches_are_the_same_images(base):
    """Each still keeps its own seed whatever batch it is sampled in (pixels within one step of 8-bit rounding)."""
    import numpy as np

    args = (base.components, ("a cat", "a dog"), 5, 10, 32, 32, 2, 7.5, "", Reporter())
    one = frozen_videos.sample_stills(*args)
    batched = frozen_videos.sample_stills(*args, batch_size=2)
    assert batched.seeds == one.seeds == [10, 11, 12, 13, 14]
    assert batched.prompts == one.prompts == ["a cat", "a dog", "a cat", "a dog", "a cat"]
    for a, b in zip(one.images, batched.images):
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_saved_spatial_adapter_reloads_bit_identical(base, customized, tmp_path):
    unet = build_motion_unet(base, customized["unet"])
    config = adapters.spatial_lora_config(4, init=False)
    adapters.add_adapter(unet, adapters.SPATIAL, config)
    out = forward(unet, unet_inputs(unet))
    naive = forward(build_motion_unet(base, customized["unet"]), unet_inputs(unet))
    assert not torch.equal(out, naive)
    adapters.save_adapter(unet, adapters.SPATIAL, config, tmp_path / "a.safetensors")
    fresh = build_motion_unet(base, customized["unet"])
    adapters.load_adapter(fresh, adapters.SPATIAL, tmp_path / "a.safetensors")
    assert torch.equal(forward(fresh, unet_inputs(fresh)), out)


def test_saved_adapter_files_are_byte_reproducible(base, tmp_path):
    """The artifact's sha256 is its identity: saving the same adapter again must give the same bytes."""
    from engine.checkpoints import file_sha256

    unet = base.base_motion_unet()
    config = adapters.spatial_lora_config(4, init=False)
    adapters.add_adapter(unet, adapters.SPATIAL, config)
    paths = [adapters.save_adapter(unet, adapters.SPATIAL, config, tmp_path / f"{i}.safetensors") for i in range(8)]
    assert len({file_sha256(p) for p in paths}) == 1
    tiny = [engine.make_tiny_checkpoint("lora", tmp_path / f"t{i}.safetensors") for i in range(8)]
    assert len({file_sha256(p) for p in tiny}) == 1


def test_customization_artifact_round_trips_to_identical_videos(base, checkpoints, trained, tmp_path):
    manifest, out_dir, _ = trained
    custom = engine.load_customization(base, out_dir, checkpoints["lora"])
    sample = engine.SampleSpec(prompt="a sks toy", seed=5, num_frames=4, steps=2)
    from engine.sampling import render_frames

    frames, _ = render_frames(base, custom, sample, Reporter())
    again, _ = render_frames(base, engine.load_customization(base, out_dir, checkpoints["lora"]), sample, Reporter())
    assert frames.shape == (4, 32, 32, 3)
    assert (frames == again).all()


def test_same_seed_same_video_other_seed_other_video(base, trained, checkpoints):
    from engine.sampling import render_frames

    custom = engine.load_customization(base, trained[1], checkpoints["lora"])
    spec = engine.SampleSpec(prompt="a sks toy", seed=1, num_frames=4, steps=2)
    a, _ = render_frames(base, custom, spec, Reporter())
    b, _ = render_frames(base, custom, spec, Reporter())
    c, _ = render_frames(base, custom, engine.SampleSpec(prompt="a sks toy", seed=2, num_frames=4, steps=2),
                         Reporter())
    assert (a == b).all()
    assert not (a == c).all()


def test_methods_differ_and_scale_zero_equals_naive(base, trained, checkpoints):
    from engine.sampling import render_frames

    custom = engine.load_customization(base, trained[1], checkpoints["lora"])
    spec = dict(prompt="a sks toy", seed=1, num_frames=4, steps=2)
    out = {m: render_frames(base, custom, engine.SampleSpec(method=m, **spec), Reporter())
           for m in ("base", "naive", "still-moving")}
    assert {v[1] for v in out.values()} == {"base", "naive", "still-moving"}
    assert not (out["base"][0] == out["naive"][0]).all()
    assert not (out["naive"][0] == out["still-moving"][0]).all()
    zero, _ = render_frames(base, custom, engine.SampleSpec(spatial_adapter_scale=0.0, **spec), Reporter())
    assert (zero == out["naive"][0]).all()


def test_motion_adapter_scale_at_sampling(base, trained, checkpoints):
    """Scale 0 is bit-identical to the customization without its Motion Adapter; other scales change the video;
    asking for it without a Motion Adapter, or on the base method, is an error naming the field."""
    from engine.sampling import render_frames

    manifest, out_dir, motion_cache = trained
    motion_file = motion_cache / manifest["motion_adapter"]["key"] / engine.MOTION_ADAPTER_FILE
    plain = engine.load_customization(base, out_dir, checkpoints["lora"])
    with_motion = engine.load_customization(base, out_dir, checkpoints["lora"], motion_file)
    spec = engine.SampleSpec(prompt="a sks toy", seed=3, num_frames=4, steps=2)
    reference, _ = render_frames(base, plain, spec, Reporter())
    at_zero, _ = render_frames(base, with_motion, spec, Reporter())
    assert (reference == at_zero).all()
    static, _ = render_frames(base, with_motion, replace(spec, motion_adapter_scale=1.0), Reporter())
    more, _ = render_frames(base, with_motion, replace(spec, motion_adapter_scale=-1.0), Reporter())
    assert not (static == reference).all() and not (more == reference).all() and not (static == more).all()
    naive, _ = render_frames(base, with_motion, replace(spec, method="naive"), Reporter())
    naive_static, _ = render_frames(base, with_motion, replace(spec, method="naive", motion_adapter_scale=1.0),
                                    Reporter())
    assert not (naive == naive_static).all()
    again, _ = render_frames(base, with_motion, spec, Reporter())
    assert (again == reference).all(), "a scaled sampling leaves the customization as it was"
    with pytest.raises(engine.SpecError) as err:
        render_frames(base, plain, replace(spec, motion_adapter_scale=1.0), Reporter())
    assert err.value.field == "motion_adapter_scale"
    with pytest.raises(engine.SpecError, match="32 frame positions") as err:  # was a RuntimeError deep in the UNet
        render_frames(base, plain, replace(spec, num_frames=40, context_length=33), Reporter())
    assert err.value.field == "context_length"  # 33 frames and more sample in windows (test_long_video.py)
    with pytest.raises(engine.SpecError) as err:
        render_frames(base, with_motion, replace(spec, method="base", motion_adapter_scale=1.0), Reporter())
    assert err.value.field == "motion_adapter_scale"
