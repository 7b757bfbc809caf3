"""The direction experiments of the shapes world end to end at a few steps.

`engine.shapes.direction_training` resumes the committed motion adapter (at learning rate 0 the adapter it writes is
the committed one, not AnimateDiff's zero-output init), records the judge's motion check before training and at every
check step, and with `--domain-rank` trains a domain adapter beside it that diffusers' LoRA loader reads back.
`engine.shapes.direction_leak` measures, per timestep, how much of the direction the noisy video itself shows."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter, UNetMotionModel
from safetensors.torch import load_file

from engine.shapes import direction_leak, direction_training, loop, save
from engine.shapes.paths import MOTION_DIR, ROOT

pytestmark = pytest.mark.slow


def test_it_resumes_the_committed_adapter_and_reports_each_check(tmp_path):
    report = tmp_path / "report.json"
    direction_training.main(["--steps", "2", "--eval-every", "1", "--per-direction", "1", "--lr", "0",
                             "--workdir", str(tmp_path / "run"), "--report", str(report)])
    data = json.loads(report.read_text())
    assert data["committed"]["step"] == 0 and [c["step"] for c in data["checks"]] == [1, 2]
    for check in (data["committed"], *data["checks"]):
        assert 0 <= check["direction_agrees"] <= 1 and set(check["by_direction"]) == {
            "left", "right", "up", "down", "still"}
    assert data["settings"]["lr"] == 0 and len(data["loss_curve"]) >= 1
    written = MotionAdapter.from_pretrained(tmp_path / "run" / "motion-adapter").state_dict()
    committed = MotionAdapter.from_pretrained(MOTION_DIR).state_dict()
    assert written.keys() == committed.keys()
    assert all(torch.equal(written[k], committed[k]) for k in committed)
    assert any(k.endswith("proj_out.weight") and committed[k].abs().sum() > 0 for k in committed)
    assert not (tmp_path / "run" / "domain-adapter").exists()


def test_a_domain_adapter_trains_on_the_cross_attention_and_loads_back_with_diffusers(tmp_path):
    direction_training.main(["--steps", "3", "--eval-every", "3", "--per-direction", "1", "--lr", "1e-2",
                             "--domain-rank", "2", "--t-min", "900", "--workdir", str(tmp_path / "run"),
                             "--report", str(tmp_path / "report.json")])
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["t_min"] == 900
    lora = load_file(tmp_path / "run" / "domain-adapter" / "pytorch_lora_weights.safetensors")
    assert lora and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in lora)
    assert all("motion_modules" not in k for k in lora)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in lora.items())  # it trained (B starts at zero)
    parts = save.load_base(ROOT)
    unet = UNetMotionModel.from_unet2d(parts["unet"], MotionAdapter.from_pretrained(tmp_path / "run" / "motion-adapter"))
    pipe = AnimateDiffPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                               unet=unet, scheduler=parts["scheduler"], motion_adapter=None)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    pipe.load_lora_weights(str(tmp_path / "run" / "domain-adapter"), adapter_name="domain")
    pipe.fuse_lora(components=["unet"], adapter_names=["domain"])
    pipe.unload_lora_weights()
    after = unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn2.to_k." in k or ".attn2.to_v." in k for k in changed)


def test_epsilon_loss_draws_timesteps_from_t_min_on():
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states):
            seen.extend(t.tolist())
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    gen = torch.Generator().manual_seed(0)
    for t_min in (0, 900):
        seen.clear()
        for _ in range(20):
            loop.epsilon_loss(Recorder(), torch.zeros(16, 4, 2, 2), lambda idx: None, scheduler, 8, gen, t_min)
        assert min(seen) >= t_min and max(seen) <= 999
        assert min(seen) < t_min + 100  # the range starts at t_min, not above it
    assert min(seen) >= 900


def test_direction_leak_reads_the_clean_direction_at_low_noise(tmp_path):
    out = tmp_path / "leak.json"
    direction_leak.main(["--videos", "2", "--timesteps", "999", "300", "--out", str(out)])
    rows = {r["t"]: r for r in json.loads(out.read_text())["timesteps"]}
    assert set(rows) == {999, 300} and rows[999]["snr"] < rows[300]["snr"]
    assert rows[300]["x0_moves_as_true"] >= 0.75  # the estimate of the clean video moves as the video does
    for row in rows.values():
        assert row["loss_true"] > 0 and row["opposite_over_true"] > 0
