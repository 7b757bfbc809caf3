"""The direction-training experiment (`engine.shapes.direction_training`) end to end at a few steps: it resumes the
committed motion adapter (at learning rate 0 the adapter it writes is the committed one, not AnimateDiff's
zero-output init) and records the judge's motion check before training and at every check step."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import MotionAdapter

from engine.shapes import direction_training
from engine.shapes.paths import MOTION_DIR

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
