"""`python -m engine.shapes.travel_eval`: does a long customized video turn around when its prompt travels from
one direction of motion to another, and does it keep the customized look? (issue #15, "Longer videos and prompt
travel", in the shapes world).

Per video (object i: shape and colour from seed 2000 + i), three `--frames`-frame videos sampled through
`engine.sampling.render_frames` (FreeNoise windows of `--context-length` frames `--context-stride` apart), prompt
"a sks {colour} {shape} moving {direction}":
  * ``travel``: ``{0: from, hold: from, hold + ramp: to}``: `from` up to frame `hold` (7/16 of the video), the
    embedding interpolated over the next 1/8, `to` from there on;
  * ``constant from`` and ``constant to``: the same seed with one prompt throughout (what each direction gives
    alone; the base T2V of this world follows the named direction only ~20% of the time, docs/shapes-world.md);
  * a plain 8-frame video of the `from` prompt (the look at the preset's own length, the reference for the look).
``--methods base`` samples the base T2V with the same prompts without `sks` (the base world's look): what the
windows do to the motion without a customization.

Read with the judge (`engine.shapes.judge`): the largest object's centroid per frame and, per frame, the look and
readability. Motion is measured in the first part (frames before `hold`) and the last part (after the ramp):
the mean per-frame centroid step projected on each named direction (``velocity_along_from`` / ``_to``,
px/frame; `to` is `from`'s opposite by default) and the share of 8-frame chunks whose track the
judge names `from` / `to` (`judge.track_direction`). ``turns_around`` (`turns_around`): the travel video moves
along `from` in the first part and along `to` in the last, each by the judge's moving threshold; the constant
videos say whether that is the prompt's doing. Writes `docs/travel-evidence.json`.

The customization is `control_eval.customize`'s (the committed DreamBooth fine-tune, a short Still-Moving
training); ``naive`` injects the fine-tune alone and needs no training (``--train-steps 1`` then suffices).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import engine
from engine.progress import Reporter
from engine.shapes import judge as judge_mod
from engine.shapes import world
from engine.shapes.control_eval import CHECKPOINT, DOCS, _shown, customize
from engine.shapes.paths import CUSTOMIZED_DIR, JUDGE_DIR
from engine.specs import SampleSpec

CHUNK = world.NUM_FRAMES  # frames per chunk read as one track: the world's video length


def travel_prompt(start: str, end: str, frames: int) -> tuple[dict[int, str], int, int]:
    """({frame: prompt}, hold, ramp end): `start` until 7/16 of the video, `end` from 9/16 on."""
    hold, ramp_end = frames * 7 // 16, frames * 9 // 16
    return {0: start, hold: start, ramp_end: end}, hold, ramp_end


def velocity(centroids: list, direction: str) -> float | None:
    """Mean per-frame centroid step projected on `direction` (px/frame), over consecutive frames both read."""
    unit = np.array(world.DIRECTIONS[direction], dtype=np.float64)
    steps = [np.dot(np.subtract(b, a), unit) for a, b in zip(centroids, centroids[1:]) if a is not None and
             b is not None]
    return round(float(np.mean(steps)), 4) if steps else None


def part(read: dict, lo: int, hi: int, start: str, end: str, colours: tuple[str, str] | None = None) -> dict:
    """Motion and look over frames [lo, hi) of a judged video (and the shares of frames read in each of
    `colours`)."""
    cents = read["centroid"][lo:hi]
    chunks = [judge_mod.track_direction(cents[i:i + CHUNK])["direction"] for i in range(0, len(cents) - CHUNK + 1,
                                                                                           CHUNK)]
    return {"frames": [lo, hi], "velocity_along_from": velocity(cents, start), "velocity_along_to": velocity(cents, end),
            "chunks": len(chunks), "chunks_from": round(chunks.count(start) / max(1, len(chunks)), 4),
            "chunks_to": round(chunks.count(end) / max(1, len(chunks)), 4),
            "chunk_reads": {str(d): chunks.count(d) for d in dict.fromkeys(chunks)},
            "spread_px": judge_mod.track_direction(cents)["spread"],
            "readable_frames": round(float(np.mean(read["readable"][lo:hi])), 4),
            "two_tone_frames": round(float(np.mean([v == "two-tone" for v in read["look"][lo:hi]])), 4),
            **({} if colours is None else {
                f"colour_{key}": round(float(np.mean([v == colour for v in read["colour"][lo:hi]])), 4)
                for key, colour in zip(("from", "to"), colours)})}


def turns_around(head: dict, tail: dict) -> bool:
    """The first part moves along `from` and the last along `to`, each by at least `judge.MOVE_MIN_PX` net over its
    frames (what the judge calls moving): a drift of hundredths of a pixel per frame is standing still."""
    def moved(piece: dict, key: str) -> bool:
        lo, hi = piece["frames"]
        return piece[key] is not None and piece[key] * (hi - lo - 1) >= judge_mod.MOVE_MIN_PX

    return moved(head, "velocity_along_from") and moved(tail, "velocity_along_to")


def judged(frames: np.ndarray, judge, hold: int, ramp_end: int, start: str, end: str,
           colours: tuple[str, str] | None = None) -> dict:
    read = judge.read((frames * 255).round().astype(np.uint8))
    n = len(frames)
    return {"first": part(read, 0, hold, start, end, colours), "last": part(read, ramp_end, n, start, end, colours),
            "whole": part(read, 0, n, start, end, colours)}


def evaluate(num_videos: int = 2, frames: int = 128, steps: int = 25, start: str = "up", end: str = "down",
             context_length: int = 8, context_stride: int = 2, methods: tuple[str, ...] = ("still-moving",),
             train_steps: int = 100, num_images: int = 12, vary: str = "direction",
             world_dir: Path | None = None) -> dict:
    """`world_dir`: another shapes world in the committed layout (`trail_world`'s), its base, motion adapter and
    DreamBooth fine-tune instead of the committed ones (the judge is the same)."""
    judge = judge_mod.Judge.load(JUDGE_DIR)
    spec, checkpoint = engine.ModelSpec(preset="shapes"), CUSTOMIZED_DIR / CHECKPOINT
    if world_dir is not None:
        spec = engine.ModelSpec(preset="shapes", base_model=str(world_dir / "base"),
                                motion_adapter=str(world_dir / "motion-adapter"))
        checkpoint = world_dir / "customized" / CHECKPOINT
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base = engine.load_base_models(spec, workdir / "base")
        custom, custom_seconds = customize(base, workdir, train_steps, num_images, checkpoint)
        results: dict = {}
        for method in methods:
            videos = []
            for i in range(num_videos):
                rng = np.random.default_rng(2000 + i)
                shape, colour = world.SHAPES[rng.integers(len(world.SHAPES))], list(world.COLOURS)[
                    rng.integers(len(world.COLOURS))]
                look = "plain" if method == "base" else "two-tone"  # the base T2I never saw the `sks` look
                caption = world.image_caption(shape, colour, look)
                colours = None
                if vary == "colour":
                    names = list(world.COLOURS)
                    colours = (colour, names[(names.index(colour) + 1) % len(names)])
                    prompt, hold, ramp_end = travel_prompt(
                        *(f"{world.image_caption(shape, c, look)} moving {start}" for c in colours), frames)
                else:
                    prompt, hold, ramp_end = travel_prompt(f"{caption} moving {start}", f"{caption} moving {end}",
                                                           frames)
                common = dict(method=method, steps=steps, seed=3000 + i, context_length=context_length,
                              context_stride=context_stride)
                specs = {"travel": SampleSpec(prompt=prompt, num_frames=frames, **common),
                         "constant from": SampleSpec(prompt=prompt[0], num_frames=frames, **common),
                         "constant to": SampleSpec(prompt=prompt[ramp_end], num_frames=frames, **common)}
                row: dict = {"object": caption, "prompt": {str(k): v for k, v in prompt.items()}, "seed": 3000 + i}
                for name, spec in specs.items():
                    t0 = time.time()
                    video, _ = engine.sampling.render_frames(base, custom, spec, Reporter(None, None))
                    row[name] = judged(video, judge, hold, ramp_end, start, end, colours) | {
                        "seconds": round(time.time() - t0, 1)}
                    print(f"[travel-eval] {method} {caption} {name}: {row[name]}", flush=True)
                short, _ = engine.sampling.render_frames(
                    base, custom, SampleSpec(prompt=prompt[0], method=method, steps=steps, seed=3000 + i),
                    Reporter(None, None))
                row["plain 8 frames"] = part(judge.read((short * 255).round().astype(np.uint8)), 0, len(short),
                                             start, end, colours)
                head, tail = row["travel"]["first"], row["travel"]["last"]
                if colours is None:
                    row["turns_around"] = turns_around(head, tail)
                else:
                    row["changes_colour"] = bool(head["colour_from"] > head["colour_to"]
                                                 and tail["colour_to"] > tail["colour_from"])
                videos.append(row)
            outcome, key = ("changed_colour", "changes_colour") if vary == "colour" else ("turned_around",
                                                                                         "turns_around")
            results[method] = {"videos": videos, outcome: sum(v[key] for v in videos),
                               "summary": _summary(videos, colour=vary == "colour")}
    return {"settings": {"vary": vary, "frames": frames, "steps": steps,
                         "guidance_scale": base.defaults.guidance_scale, "from": start,
                         "to": "the next colour" if vary == "colour" else end, "context_length": context_length,
                         "context_stride": context_stride, "chunk_frames": CHUNK,
                         "world": "committed" if world_dir is None else _shown(world_dir),
                         "customization": {"checkpoint": _shown(checkpoint),
                                           "train_steps": train_steps, "num_images": num_images,
                                           "motion_adapter": False, "seconds": custom_seconds},
                         "object_seeds": "2000 + i", "sample_seeds": "3000 + i"},
            "results": results}


def _summary(videos: list[dict], colour: bool = False) -> dict:
    """Means over the videos of each run's parts' figures (None where no frame was read)."""
    out = {}
    keys = ("velocity_along_from", "velocity_along_to", "chunks_from", "chunks_to", "readable_frames",
            "two_tone_frames", *(("colour_from", "colour_to") if colour else ()))
    for run in ("travel", "constant from", "constant to"):
        for piece in ("first", "last"):
            for key in keys:
                values = [v[run][piece][key] for v in videos if v[run][piece][key] is not None]
                out[f"{run} / {piece} / {key}"] = round(float(np.mean(values)), 4) if values else None
    for key in ("readable_frames", "two_tone_frames"):
        out[f"plain 8 frames / {key}"] = round(float(np.mean([v["plain 8 frames"][key] for v in videos])), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=2)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--from", dest="start", default="up", choices=[d for d in world.DIRECTIONS if d != "still"])
    parser.add_argument("--to", dest="end", default="down", choices=[d for d in world.DIRECTIONS if d != "still"])
    parser.add_argument("--context-length", type=int, default=8, help="the world's video length, what the motion "
                        "modules were trained on")
    parser.add_argument("--context-stride", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=["still-moving"], choices=["base", "naive", "still-moving"])
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--num-images", type=int, default=12)
    parser.add_argument("--vary", choices=["direction", "colour"], default="direction",
                        help="what the prompt travels between (colour: the control, see above)")
    parser.add_argument("--world", type=Path, default=None,
                        help="another world's directory (engine.shapes.trail_world's --workdir); default: committed")
    parser.add_argument("--out", type=Path, default=DOCS / "travel-evidence.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    report = evaluate(args.videos, args.frames, args.steps, args.start, args.end, args.context_length,
                      args.context_stride, tuple(args.methods), args.train_steps, args.num_images, args.vary, args.world)
    report["settings"]["seconds"] = round(time.time() - start, 1)
    report["settings"]["command"] = "python -m engine.shapes.travel_eval " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"[travel-eval] wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
