"""The trail variant of the shapes world (`world.TRAIL`, `engine.shapes.trail_world`): a moving object's still shows
which way it goes, in a streak the judge does not count as object; the committed world's frames are untouched."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from engine.shapes import data, judge, trail_world, world

MOVING = [d for d in world.DIRECTIONS if d != "still"]


@pytest.mark.parametrize("direction", MOVING)
def test_the_streak_lies_behind_the_object_and_under_the_judges_threshold(direction):
    dx, dy = world.DIRECTIONS[direction]
    for colour in world.COLOURS:
        plain, mask = world.render("circle", colour, "plain", 16.0, 16.0, 12.0)
        trailed, trailed_mask = world.render("circle", colour, "plain", 16.0, 16.0, 12.0, trail=(dx, dy))
        assert np.array_equal(mask, trailed_mask)
        changed = np.abs(trailed.astype(int) - plain.astype(int)).max(-1) > 0
        streak = changed & ~mask
        assert streak.sum() >= 10
        ys, xs = np.nonzero(streak)
        # behind: the streak's mean sits against the motion, about half the trail's length from the centre
        assert (xs.mean() + 0.5 - 16.0) * dx + (ys.mean() + 0.5 - 16.0) * dy < -3
        # the judge's object grows by at most the anti-aliased rim behind it (partly covered pixels over the streak)
        grown = judge.foreground(trailed) & ~judge.foreground(plain)
        rim = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert not (grown & ~rim).any() and grown.sum() <= 6
        assert judge.measure(trailed).count == 1


def test_a_still_object_and_the_default_world_draw_no_streak():
    a = world.video_sample(np.random.default_rng(4), direction="still", trail=True)
    b = world.video_sample(np.random.default_rng(4), direction="still")
    assert np.array_equal(a.frames, b.frames)
    c = world.video_sample(np.random.default_rng(4), direction="left", trail=True)
    d = world.video_sample(np.random.default_rng(4), direction="left")
    assert not np.array_equal(c.frames, d.frames) and np.array_equal(c.masks, d.masks)
    assert np.array_equal(c.centroids, d.centroids)


def test_the_streak_reading_names_the_generators_directions():
    rng = np.random.default_rng(9)
    samples = [world.image_sample(rng, trail=True, direction=d) for d in world.DIRECTIONS for _ in range(20)]
    read = trail_world.trail_agreement(np.stack([s.frames[0] for s in samples]), [s.scene.direction for s in samples])
    assert read["agrees"] >= 0.9 and min(read["by_direction"].values()) >= 0.8
    plain = np.stack([world.image_sample(rng).frames[0] for _ in range(40)])
    assert {trail_world.trail_direction(f) for f in plain} == {"still"}
    assert trail_world.trail_direction(np.full((32, 32, 3), world.BACKGROUND, np.uint8)) is None


def test_trail_stills_are_captioned_with_the_direction_they_show():
    pixels, captions = data.captioned_images(60, seed=3, trail=True)
    frames = data.to_uint8(pixels)
    named = [(f, c.split()[-1]) for f, c in zip(frames, captions) if "moving" in c or "still" in c]
    assert len(named) >= 20
    hits = [trail_world.trail_direction(f) == w for f, w in named]
    assert np.mean(hits) >= 0.85
    _, default = data.captioned_images(60, seed=3)
    assert default != captions  # the default world's captions name a random direction, not the still's


@pytest.mark.heavy  # two minutes: every stage's judge checks sample at 25 steps
def test_the_experiment_trains_every_stage_and_reports_its_checks(tmp_path):
    report = tmp_path / "report.json"
    trail_world.main(["--workdir", str(tmp_path / "world"), "--report", str(report), "--vae-steps", "2",
                      "--unet-steps", "2", "--motion-steps", "2", "--eval-every", "2", "--per-direction", "1",
                      "--stages", "vae", "unet", "motion", "streaks"])
    out = json.loads(report.read_text())
    assert out["generator"]["agrees"] >= 0.9 and out["invocations"][-1]["stages"] == [
        "vae", "unet", "motion", "streaks"]
    assert set(out["vae"]["round_trip"]["by_direction"]) == set(world.DIRECTIONS)
    check = out["unet"]["conditioning_checks"][-1]
    assert check["step"] == 2 and check["trail_samples"] == len(world.SHAPES) * len(world.COLOURS) * 5
    assert [c["step"] for c in out["motion_checks"]] == [2] and out["motion"]["trail"] is True
    streaks = out["streaks"]
    assert streaks["videos"] == 5 and [r["named"] for r in streaks["rows"]] == list(world.DIRECTIONS)
    assert all(r["streak"] in (*world.DIRECTIONS, None) for r in streaks["rows"])
    for part in ("base/vae", "base/unet", "base/text_encoder", "judge", "motion-adapter"):
        assert (tmp_path / "world" / part).is_dir(), part
