"""The shapes world's generator and judge, on frames whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from engine.shapes import judge as judge_mod
from engine.shapes import world
from engine.shapes.paths import JUDGE_DIR


@pytest.fixture(scope="module")
def judge():
    return judge_mod.Judge.load(JUDGE_DIR)


@pytest.mark.parametrize("direction", list(world.DIRECTIONS))
def test_videos_move_as_their_caption_says_and_stay_inside(direction):
    rng = np.random.default_rng(1)
    for _ in range(20):
        sample = world.video_sample(rng, direction=direction)
        assert sample.caption.endswith(world.motion_phrase(direction))
        assert sample.frames.shape == (world.NUM_FRAMES, world.SIZE, world.SIZE, 3)
        assert sample.masks.any(axis=(1, 2)).all()
        steps = np.diff(sample.centroids, axis=0)
        dx, dy = world.DIRECTIONS[direction]
        if direction == "still":
            assert np.abs(steps).max() == 0
            continue
        along = steps[:, 0] * dx + steps[:, 1] * dy
        assert (along > 0.5).all() and abs(along.mean() - sample.scene.speed) < 0.3
        edge = sample.masks[:, 0, :].any() or sample.masks[:, -1, :].any() or sample.masks[:, :, 0].any()
        assert not edge, "the object never leaves the frame"


def test_every_drawn_path_fits_even_for_the_largest_fastest_objects():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        scene = world.random_scene(rng, direction=list(world.DIRECTIONS)[rng.integers(5)])
        for f in (0, world.NUM_FRAMES - 1):
            x, y = scene.centre(f)
            half = scene.size / 2
            assert half <= x <= world.SIZE - half and half <= y <= world.SIZE - half


def test_captions_name_the_look_by_its_token():
    assert world.image_caption("circle", "red") == "a red circle"
    assert world.image_caption("circle", "red", "two-tone") == "a sks red circle"
    scene = world.Scene("square", "blue", "plain", "left", 12, 20, 16, 2)
    assert world.video_caption(scene) == "a blue square moving left"


def test_the_new_look_is_white_above_and_coloured_below():
    frame, mask = world.render("square", "red", "two-tone", 16, 16, 14)
    rows = np.nonzero(mask.any(1))[0]
    top, bottom = frame[rows[1], 16], frame[rows[-2], 16]
    assert tuple(top) == world.SECOND_COLOUR and tuple(bottom) == world.COLOURS["red"]
    plain, _ = world.render("square", "red", "plain", 16, 16, 14)
    assert tuple(plain[rows[1], 16]) == world.COLOURS["red"]


def test_analytic_measures_count_and_locate_objects():
    frame, mask = world.render("circle", "green", "plain", 10, 20, 12)
    obj = judge_mod.measure(frame)
    ys, xs = np.nonzero(mask)
    assert obj.count == 1 and abs(obj.centroid[0] - xs.mean()) < 0.6 and abs(obj.centroid[1] - ys.mean()) < 0.6
    assert abs(obj.area - mask.sum()) <= 0.1 * mask.sum()
    other, _ = world.render("square", "blue", "plain", 25, 6, 8)
    two = np.where(judge_mod.foreground(other)[..., None], other, frame)
    assert judge_mod.measure(two).count == 2
    empty = np.zeros_like(frame) + np.array(world.BACKGROUND, dtype=np.uint8)
    assert judge_mod.measure(empty).count == 0


def test_track_direction_reads_generator_videos():
    rng = np.random.default_rng(2)
    for direction in world.DIRECTIONS:
        for _ in range(10):
            sample = world.video_sample(rng, direction=direction)
            cents = [tuple(c) for c in sample.centroids]
            assert judge_mod.track_direction(cents)["direction"] == direction
            assert judge_mod.moves_as_named(cents, direction)
            wrong = "left" if direction != "left" else "right"
            assert not judge_mod.moves_as_named(cents, wrong)
    assert judge_mod.track_direction([None, (3.0, 3.0)])["direction"] is None


def test_judge_reads_fresh_generator_frames(judge):
    rng = np.random.default_rng(123)
    samples = [world.image_sample(rng, look=world.LOOKS[i % 2]) for i in range(300)]
    read = judge.read(np.stack([s.frames[0] for s in samples]))
    for head in judge_mod.HEADS:
        accuracy = np.mean([r == getattr(s.scene, head) for r, s in zip(read[head], samples)])
        assert accuracy >= 0.97, (head, accuracy)
    assert np.mean(read["readable"]) >= 0.95


def test_judge_says_unreadable_for_noise_and_two_objects(judge):
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (4, world.SIZE, world.SIZE, 3), dtype=np.uint8)
    assert not any(judge.read(noise)["readable"])
    a, _ = world.render("circle", "red", "plain", 8, 8, 10)
    b, _ = world.render("square", "blue", "plain", 24, 24, 10)
    both = np.where(judge_mod.foreground(b)[..., None], b, a)
    assert judge.read(both[None])["readable"] == [False]


def test_the_new_look_survives_the_worlds_autoencoder(judge):
    """The look is chosen so that the VAE's 8x8 latents hold it: the judge reads VAE round trips as it reads
    the generator's frames (finer textures, e.g. 3-px stripes, came back as a tint)."""
    import torch
    from diffusers import AutoencoderKL

    from engine.shapes import data
    from engine.shapes.paths import BASE_DIR

    vae = AutoencoderKL.from_pretrained(BASE_DIR / "vae").eval()
    rng = np.random.default_rng(5)
    samples = [world.image_sample(rng, look=world.LOOKS[i % 2]) for i in range(100)]
    with torch.no_grad():
        x = data.to_tensor(np.stack([s.frames[0] for s in samples]))
        back = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    frames = ((back.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    read = judge.read(frames)
    for head in judge_mod.HEADS:
        assert np.mean([r == getattr(s.scene, head) for r, s in zip(read[head], samples)]) >= 0.95, head
