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


def video(ys: np.ndarray, look: str = "two-tone", colours=None) -> np.ndarray:
    """A red circle (or of `colours[i]` in frame i) at x = 16 and the given centre heights, as float frames in
    [0, 1] (what sampling returns)."""
    colours = colours or ["red"] * len(ys)
    frames = [world.render("circle", c, look, 16.0, float(y), 12.0)[0] for y, c in zip(ys, colours)]
    return np.stack(frames).astype(np.float32) / 255


def test_travel_prompt_holds_then_ramps():
    prompt, hold, ramp_end = travel_eval.travel_prompt("a sks red circle moving up", "a sks red circle moving down",
                                                       FRAMES)
    assert (hold, ramp_end) == (56, 72)
    assert prompt == {0: "a sks red circle moving up", 56: "a sks red circle moving up",
                      72: "a sks red circle moving down"}


def test_an_object_that_rises_then_falls_turns_around(judge):
    _, hold, ramp_end = travel_eval.travel_prompt("x up", "x down", FRAMES)
    t = np.arange(FRAMES)
    ys = 22 - 0.2 * np.minimum(t, 64) + 0.2 * np.maximum(t - 64, 0)  # up 0.2 px/frame, then down
    read = travel_eval.judged(video(ys), judge, hold, ramp_end, "up", "down")
    assert read["first"]["velocity_along_from"] == pytest.approx(0.2, abs=0.05)
    assert read["last"]["velocity_along_to"] == pytest.approx(0.2, abs=0.05)
    assert read["last"]["velocity_along_from"] == pytest.approx(-0.2, abs=0.05)
    assert read["first"]["two_tone_frames"] > 0.9 and read["whole"]["readable_frames"] > 0.9
    assert travel_eval.turns_around(read["first"], read["last"])

    rising = 22 - 0.1 * t
    still = np.full(FRAMES, 16.0)
    # up then down, but by a drift (0.02 px/frame: ~1 px over each part) that the judge calls standing still
    drift = 16 - 0.02 * np.minimum(t, 64) + 0.02 * np.maximum(t - 64, 0)
    for ys, label in ((rising, "rising"), (still, "still"), (drift, "drift")):
        r = travel_eval.judged(video(ys), judge, hold, ramp_end, "up", "down")
        assert not travel_eval.turns_around(r["first"], r["last"]), label
    assert r["first"]["velocity_along_from"] > 0 and r["last"]["velocity_along_to"] > 0  # the drift does reverse
    r = travel_eval.judged(video(still, look="plain"), judge, hold, ramp_end, "up", "down")
    assert abs(r["whole"]["velocity_along_from"]) < 0.02 and r["whole"]["two_tone_frames"] < 0.1
    assert r["whole"]["chunk_reads"] == {"still": 16}


def test_colour_shares_follow_a_colour_change(judge):
    """The colour control: frames red until 64 then blue read as `from` in the first part and `to` in the last;
    one colour throughout reads the same in both parts."""
    _, hold, ramp_end = travel_eval.travel_prompt("x red", "x blue", FRAMES)
    still = np.full(FRAMES, 16.0)
    changed = travel_eval.judged(video(still, colours=["red"] * 64 + ["blue"] * 64), judge, hold, ramp_end, "up",
                                 "down", ("red", "blue"))
    assert changed["first"]["colour_from"] > 0.9 and changed["first"]["colour_to"] < 0.1
    assert changed["last"]["colour_to"] > 0.9 and changed["last"]["colour_from"] < 0.1
    same = travel_eval.judged(video(still), judge, hold, ramp_end, "up", "down", ("red", "blue"))
    assert same["last"]["colour_from"] > 0.9 and same["last"]["colour_to"] < 0.1
