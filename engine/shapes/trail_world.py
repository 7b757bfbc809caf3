"""`python -m engine.shapes.trail_world --workdir DIR`: does a world whose stills show which way an object moves
give a T2V that follows the named direction? (#9's open bar, #15's prompt travel; docs/shapes-world.md.)

The committed world's direction word carries information only where a video is almost pure noise
(`direction_leak`), and no motion training taught it (`direction_training`). Here the stills show the motion:
the trail variant of the generator (`world.TRAIL`) draws a faint streak behind a moving object, and the T2I's
motion phrases name the direction the still shows, so the T2I can learn word -> streak where it learns colour
and shape, and the motion modules streak -> motion. Everything else is the committed world's recipe: its text
side and judge are copied (the streak stays under the judge's foreground threshold, so the judge's centroids are
the object's own), then the VAE (`train_vae`: the committed one decodes the faint streak as background), the T2I
(`train_unet`), the motion adapter (`train_motion`, fresh, the committed settings) and the customizations
(`dreambooth.make_customized`) are trained from nothing on the trail variant's data, with the committed seeds.
Checks: the streak reading of generator stills and of their VAE round trips, the judge's conditioning check and
a streak check of T2I samples (`trail_direction`) as the T2I trains, the judge's motion check of T2V samples. Writes `--report` after each
stage, whichever way it comes out; the world is written under `--workdir` (not committed by this command).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.shapes import judge as judge_mod
from engine.shapes import save, world
from engine.shapes.paths import ROOT

FAINT = 12  # a trail pixel differs from the background by more than this (and not more than the foreground's 45)
MIN_TRAIL_PIXELS = 6
MIN_OFFSET = 1.0  # px between the object's centroid and its streak's, for a streak to name a direction
STAGES = ("vae", "unet", "motion", "customized", "streaks")
COPIED = ("base/text_encoder", "base/tokenizer", "base/scheduler", "base/model_index.json", "judge")


def trail_direction(frame: np.ndarray) -> str | None:
    """Which way a frame's faint streak says its object moves ("still" without a streak; None without an object).

    Analytic, like the judge's centroid: the faint pixels (more than `FAINT` from the background, under the
    foreground threshold) outside the largest object grown by one pixel; the object moves away from their mean."""
    objects = judge_mod.measure(frame)
    if objects.centroid is None:
        return None
    diff = judge_mod.background_difference(frame)
    objects_mask = diff > judge_mod.FOREGROUND_THRESHOLD  # `judge.foreground`, from the same difference
    grown = cv2.dilate(objects_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    faint = (diff > FAINT) & ~grown
    if faint.sum() < MIN_TRAIL_PIXELS:
        return "still"
    ys, xs = np.nonzero(faint)
    dx, dy = objects.centroid[0] - xs.mean(), objects.centroid[1] - ys.mean()
    if max(abs(dx), abs(dy)) < MIN_OFFSET:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def trail_agreement(frames: np.ndarray, directions: list[str]) -> dict:
    """Share of frames whose streak names their direction, overall and by direction."""
    read = [trail_direction(f) for f in frames]
    hits = {d: [r == d for r, e in zip(read, directions) if e == d] for d in dict.fromkeys(directions)}
    return {"agrees": round(float(np.mean([r == d for r, d in zip(read, directions)])), 4),
            "by_direction": {d: round(float(np.mean(h)), 4) for d, h in hits.items()}}


def trail_check(parts: dict, unet, per_prompt: int = 1, seed: int = 0, steps: int = 25,
                guidance_scale: float = 7.5) -> dict:
    """T2I samples of "a {colour} {shape} moving {direction}" / "standing still" (every combination): does the
    streak name the prompt's direction?"""
    from engine.shapes.train_unet import t2i_pipeline

    pipe = t2i_pipeline(parts, unet)
    combos = [(s, c, d) for s in world.SHAPES for c in world.COLOURS for d in world.DIRECTIONS] * per_prompt
    prompts = [f"{world.image_caption(s, c)} {world.motion_phrase(d)}" for s, c, d in combos]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np",
                  generator=torch.Generator().manual_seed(seed), height=world.SIZE, width=world.SIZE).images
    frames = (images * 255).round().astype(np.uint8)
    return {"trail": trail_agreement(frames, [d for _, _, d in combos]), "trail_samples": len(combos)}


@torch.no_grad()
def round_trip(vae, frames: np.ndarray) -> np.ndarray:
    """uint8 frames through the autoencoder and back."""
    from engine.shapes.data import to_tensor, to_uint8

    return to_uint8(vae.decode(vae.encode(to_tensor(frames)).latent_dist.mean).sample)


def streaks_and_motion(parts: dict, judge, per_direction: int = 8, seed: int = 0, steps: int = 25,
                       guidance_scale: float = 7.5) -> dict:
    """The motion check's videos (`train_motion.motion_check`: its scenes, prompts and seed), read twice: the
    majority streak of the frames (`trail_direction`) and the centroid track (`judge.track_direction`). Separates
    the two links: does the T2I draw the streak the prompt names, do the motion modules move the way the streak
    points?"""
    from collections import Counter

    from diffusers import UNetMotionModel

    from engine.shapes.train_motion import check_videos

    unet = UNetMotionModel.from_unet2d(parts["unet"], parts["motion_adapter"]).eval()
    scenes, frames = check_videos(parts, unet, per_direction, seed, steps, guidance_scale)
    rows = []
    for scene, video in zip(scenes, frames):
        streak = Counter(trail_direction(f) for f in video).most_common(1)[0][0]
        track = judge_mod.track_direction(judge.read(video)["centroid"])["direction"]
        rows.append({"named": scene.direction, "streak": streak, "track": track})
    moving = [r for r in rows if r["streak"] not in ("still", None)]

    def share(items, a, b):
        return round(float(np.mean([r[a] == r[b] for r in items])), 4) if items else None

    return {"videos": len(rows), "streak_is_named": share(rows, "streak", "named"),
            "track_is_named": share(rows, "track", "named"),
            "track_follows_streak": share(moving, "track", "streak"), "videos_with_a_moving_streak": len(moving),
            "rows": rows}


def copy_committed(workdir: Path) -> None:
    """The committed world's VAE, text side and judge: what the trail variant does not retrain."""
    for rel in COPIED:
        src, dst = ROOT / rel, workdir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--report", type=Path, default=Path("docs/trail-world.json"))
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--unet-steps", type=int, default=5000)
    parser.add_argument("--motion-steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--per-direction", type=int, default=8, help="videos per direction in the motion check")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    copy_committed(args.workdir)
    report = json.loads(args.report.read_text()) if args.report.exists() else {}
    settings = vars(args) | {"workdir": str(args.workdir), "report": str(args.report),
                             "trail": [list(t) for t in world.TRAIL]}
    report.setdefault("invocations", []).append(settings)  # stages can be rerun one at a time: keep each command

    def write() -> None:
        args.report.write_text(json.dumps(report, indent=1, default=float) + "\n")

    judge = save.load_judge(args.workdir)
    rng = np.random.default_rng(0)  # the streak reading on the generator itself: what a perfect T2I scores
    truth = [world.image_sample(rng, trail=True, direction=d) for d in world.DIRECTIONS for _ in range(40)]
    stills, directions = np.stack([s.frames[0] for s in truth]), [s.scene.direction for s in truth]
    report["generator"] = trail_agreement(stills, directions)
    write()
    for stage in args.stages:
        start = time.time()
        parts = save.load_base(args.workdir)
        if stage == "vae":
            from engine.shapes.train_vae import train_vae

            vae, metrics = train_vae(steps=args.vae_steps, trail=True)
            save.save_vae(vae, args.workdir)
            metrics["round_trip"] = trail_agreement(round_trip(vae, stills), directions)
        elif stage == "unet":
            from engine.shapes.train_unet import train_unet

            unet, metrics = train_unet(parts, steps=args.unet_steps, judge=judge, eval_every=args.eval_every,
                                       trail=True, on_check=lambda u, p=parts: trail_check(p, u))
            save.save_unet(unet, args.workdir)
        elif stage == "motion":
            from engine.shapes.train_motion import train_motion

            parts.pop("motion_adapter", None)
            adapter, metrics = train_motion(parts, steps=args.motion_steps, judge=judge, eval_every=args.eval_every,
                                            check_kwargs={"per_direction": args.per_direction}, trail=True,
                                            on_check=lambda checks: (report.__setitem__("motion_checks", checks),
                                                                     write()))
            save.save_motion_adapter(adapter, args.workdir)
        elif stage == "streaks":
            metrics = streaks_and_motion(parts, judge, per_direction=args.per_direction)
        else:
            from engine.shapes.dreambooth import make_customized

            metrics = make_customized(parts, args.workdir / "customized")
        report[stage] = metrics | {"wall_seconds": round(time.time() - start, 1), "settings": settings}
        write()
        print(f"[trail-world] {stage}: {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
