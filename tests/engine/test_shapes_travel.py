"""The prompt-travel measurement (`engine.shapes.travel_eval`) on generator videos whose motion is known: an object
that rises then falls turns around, one that only rises or stands still does not."""

from __future__ import annotations

import numpy as np
import pytest

from engine.shapes import judge as judge_mod
from engine.shapes import travel_eval, world
from engine.shapes.paths import JUDGE_DIR

FRAMES = 128


@pytest.fixture(scope="module")
def judge():
    return judge_mod.Judge.load(JUDGE_DIR)


def video(ys: np.ndarray, look: str = "two-tone") -> np.ndarray:
    """A red circle at x = 16 and the given centre heights, as float frames in [0, 1] (what sampling returns)."""
    frames = [world.render("circle", "red", look, 16.0, float(y), 12.0)[0] for y in ys]
    return np.stack(frames).astype(np.float32) / 255


def test_travel_prompt_holds_then_ramps():
    prompt, hold, ramp_end = travel_eval.travel_prompt("a sks red circle", "up", "down", FRAMES)
    assert (hold, ramp_end) == (56, 72)
    assert prompt == {0: "a sks red circle moving up", 56: "a sks red circle moving up",
                      72: "a sks red circle moving down"}


def test_an_object_that_rises_then_falls_turns_around(judge):
    _, hold, ramp_end = travel_eval.travel_prompt("x", "up", "down", FRAMES)
    t = np.arange(FRAMES)
    ys = 22 - 0.2 * np.minimum(t, 64) + 0.2 * np.maximum(t - 64, 0)  # up 0.2 px/frame, then down
    read = travel_eval.judged(video(ys), judge, hold, ramp_end, "up", "down")
    assert read["first"]["velocity_along_from"] == pytest.approx(0.2, abs=0.05)
    assert read["last"]["velocity_along_to"] == pytest.approx(0.2, abs=0.05)
    assert read["last"]["velocity_along_from"] == pytest.approx(-0.2, abs=0.05)
    assert read["first"]["two_tone_frames"] > 0.9 and read["whole"]["readable_frames"] > 0.9

    rising = 22 - 0.1 * t
    still = np.full(FRAMES, 16.0)
    for ys, label in ((rising, "rising"), (still, "still")):
        r = travel_eval.judged(video(ys), judge, hold, ramp_end, "up", "down")
        assert not (r["first"]["velocity_along_from"] > 0 and r["last"]["velocity_along_to"] > 0), label
    r = travel_eval.judged(video(still, look="plain"), judge, hold, ramp_end, "up", "down")
    assert abs(r["whole"]["velocity_along_from"]) < 0.02 and r["whole"]["two_tone_frames"] < 0.1
    assert r["whole"]["chunk_reads"] == {"still": 16}
