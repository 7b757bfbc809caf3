"""The switches of the fast GPU path, checked on the tiny base (on CPU here; the CUDA test runs where a GPU
is): SDPA attention, VAE slicing, gradient checkpointing, half precision, the optional `torch.compile`."""

from __future__ import annotations

import shutil

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import engine
from engine import adapters
from engine.models import build_motion_unet, make_training_scheduler
from engine.progress import Reporter
from engine.sampling import _pick_model, render_frames
from engine.training import TrainData, train_adapter

SAMPLE = dict(prompt="a sks toy running", num_frames=4, height=32, width=32, steps=2, seed=5)


def test_every_attention_runs_through_sdpa(base, trained, checkpoints):
    _, directory, _ = trained
    training = base.base_motion_unet()
    adapters.add_adapter(training, adapters.MOTION, adapters.motion_lora_config(4))
    adapters.add_adapter(training, adapters.SPATIAL, adapters.spatial_lora_config(4))
    modules = {"sampling unet": base.sampling_motion_unet(), "training unet with both adapters": training,
               "customized unet": engine.load_customization(base, directory, checkpoints["lora"]).unet,
               "vae": base.components["vae"]}
    for name, module in modules.items():
        processors = list(module.attn_processors.values())
        assert processors and all(type(p) is AttnProcessor2_0 for p in processors), (name, set(map(type, processors)))
    assert base.components["text_encoder"].config._attn_implementation == "sdpa"


def test_vae_slicing_is_on_and_decodes_like_the_whole_batch(base):
    vae = base.components["vae"]
    assert vae.use_slicing
    z = torch.randn(3, vae.config.latent_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sliced = vae.decode(z).sample
        vae.disable_slicing()
        try:
            whole = vae.decode(z).sample
        finally:
            vae.enable_slicing()
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)


class ForwardCount:
    """Counts runs of a module's forward (a wrapper: checkpointing's recompute fires no forward hooks)."""

    def __init__(self, module):
        self.calls, forward = 0, module.forward

        def counted(*args, **kwargs):
            self.calls += 1
            return forward(*args, **kwargs)

        module.forward = counted


def test_gradient_checkpointing_recomputes_and_trains_the_same(base, tmp_path):
    ckpt_base = engine.load_base_models(engine.ModelSpec(preset="tiny", gradient_checkpointing=True), tmp_path)
    data = TrainData(latents=torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(1)),
                     embeddings=torch.randn(2, 77, base.components["unet"].config.cross_attention_dim,
                                             generator=torch.Generator().manual_seed(2)))
    results = {}
    for name, b in (("plain", base), ("checkpointed", ckpt_base)):
        unet = build_motion_unet(b, b.components["unet"])
        adapters.add_adapter(unet, adapters.SPATIAL, adapters.spatial_lora_config(4, init=False), seed=3)
        adapters.activate(unet, [adapters.SPATIAL])
        resnet = ForwardCount(unet.up_blocks[-1].resnets[0])  # after LoRA layers: on the gradient path
        losses = train_adapter(unet, adapters.SPATIAL, data, make_training_scheduler(b), 3, 1e-3, 1, 0, Reporter(),
                               stage="train").losses
        results[name] = (unet.is_gradient_checkpointing, resnet.calls, losses, adapters.adapter_state(unet, "spatial"))
    assert results["plain"][:2] == (False, 3)
    assert results["checkpointed"][:2] == (True, 6)  # each step's forward runs again in backward
    assert results["plain"][2] == pytest.approx(results["checkpointed"][2], rel=1e-5)
    for key, value in results["plain"][3].items():
        torch.testing.assert_close(results["checkpointed"][3][key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_half_precision_on_cpu_is_refused_naming_the_field(tmp_path, precision):
    with pytest.raises(engine.SpecError, match=precision) as error:
        engine.load_base_models(engine.ModelSpec(preset="tiny", device="cpu", precision=precision), tmp_path)
    assert error.value.field == "precision"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_half_precision_on_cuda_samples_finite_frames(tmp_path, precision):
    base = engine.load_base_models(engine.ModelSpec(preset="tiny", device="cuda", precision=precision), tmp_path)
    assert base.sampling_motion_unet().dtype == getattr(torch, precision)
    frames, _ = render_frames(base, None, engine.SampleSpec(**SAMPLE, method="base"), Reporter())
    assert frames.shape == (4, 32, 32, 3) and frames.std() > 0 and bool((frames == frames).all())


def test_compile_setting_wraps_the_sampling_unets_only(trained, checkpoints, tmp_path):
    _, directory, _ = trained
    base = engine.load_base_models(engine.ModelSpec(preset="tiny", compile_unet=True), tmp_path)
    custom = engine.load_customization(base, directory, checkpoints["lora"])
    _, called, _ = _pick_model(base, None, engine.SampleSpec(**SAMPLE, method="base"))
    assert called is base.sampling_forward()  # compiled once, then reused
    assert called._orig_mod is base.sampling_motion_unet()
    _, called, _ = _pick_model(base, custom, engine.SampleSpec(**SAMPLE))
    assert called is custom.compiled_unet and called._orig_mod is custom.unet
    assert not hasattr(base.base_motion_unet(), "_orig_mod")  # training copies stay plain modules
    eager = engine.load_base_models(engine.ModelSpec(preset="tiny"), tmp_path / "eager")
    assert eager.sampling_forward() is eager.sampling_motion_unet()
    assert engine.load_customization(eager, directory, checkpoints["lora"]).compiled_unet is None


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")), reason="torch.compile (inductor) needs a C compiler")
def test_compiled_sampling_matches_eager(base, trained, checkpoints, tmp_path):
    _, directory, _ = trained
    compiled_base = engine.load_base_models(engine.ModelSpec(preset="tiny", compile_unet=True), tmp_path)
    sample = engine.SampleSpec(**SAMPLE)  # still-moving: the spatial LoRA active under the compiled graph
    eager, _ = render_frames(base, engine.load_customization(base, directory, checkpoints["lora"]), sample, Reporter())
    custom = engine.load_customization(compiled_base, directory, checkpoints["lora"])
    compiled, _ = render_frames(compiled_base, custom, sample, Reporter())
    assert eager.std() > 0
    assert abs(compiled - eager).max() < 1e-4
