"""`python -m engine.shapes.control_eval`: does the shapes world's canny ControlNet make a customized video follow
a reference? (issue #13, "In the shapes world").

References: base-look objects moving along paths the text does not name (diagonals and arcs), drawn by the
generator with their masks, written as GIFs and read back through the product's reference path
(`conditioning.read_reference`, `conditioning.canny`). Each is sampled with the prompt "a sks {colour} {shape}"
(no motion phrase) through `engine.sampling.render_frames`, for every method (base, naive injection, Still-Moving
with a short customization of the committed DreamBooth LoRA) with and without the control. Measured per run: the
mean per-frame IoU of the largest object's mask (`judge.measure`) against the reference's generator mask, and what
the judge reads (the customized look, readable frames). Writes `docs/control-evidence.json`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import engine
from engine import export
from engine.progress import Reporter
from engine.shapes import judge as judge_mod
from engine.shapes import world
from engine.shapes.paths import CUSTOMIZED_DIR, JUDGE_DIR, ROOT
from engine.specs import ControlSpec, SampleSpec

DOCS = Path(__file__).resolve().parents[2] / "docs"
OBJECT_SIZE = (10.0, 12.0)
TRAVEL = 12.0  # pixels the centre moves along each axis over the video


def path_centres(kind: str, corner: int, num_frames: int = world.NUM_FRAMES, size: float = 11.0,
                 travel: float = TRAVEL) -> np.ndarray:
    """(F, 2) centres (x, y) of a path inside the frame: a diagonal from one of four corners to the opposite one,
    or a quarter arc (centred on that corner's opposite) between the same two ends."""
    half = size / 2 + world.MARGIN
    lo = half + (world.SIZE - 2 * half - travel) / 2
    start = np.array([lo, lo])
    direction = np.array([1.0, 1.0])
    flip = np.array([(corner & 1), (corner >> 1) & 1], dtype=bool)
    start = np.where(flip, world.SIZE - start, start)
    direction = np.where(flip, -direction, direction)
    s = np.linspace(0, 1, num_frames)
    if kind == "diagonal":
        return start + travel * s[:, None] * direction
    if kind == "arc":  # from start, bulging away from the diagonal, to the opposite end
        angle = s * np.pi / 2
        return start + travel * np.stack([np.sin(angle), 1 - np.cos(angle)], -1) * direction
    raise ValueError(f"kind={kind!r}; expected diagonal or arc")


def reference(index: int, seed: int = 5000) -> world.Sample:
    """Reference video `index`: a base-look object (shape, colour, size drawn from seed + index) on a diagonal
    (even index) or an arc (odd), from corner index // 2 % 4."""
    rng = np.random.default_rng(seed + index)
    shape = world.SHAPES[rng.integers(len(world.SHAPES))]
    colour = list(world.COLOURS)[rng.integers(len(world.COLOURS))]
    size = float(rng.uniform(*OBJECT_SIZE))
    centres = path_centres("diagonal" if index % 2 == 0 else "arc", index // 2 % 4, size=size)
    frames, masks = zip(*(world.render(shape, colour, "plain", float(x), float(y), size) for x, y in centres))
    scene = world.Scene(shape, colour, "plain", "still", size, float(centres[0, 0]), float(centres[0, 1]), 0.0)
    return world.Sample(np.stack(frames), np.stack(masks), centres.astype(np.float32), scene)


CHECKPOINT = "dreambooth-unet.safetensors"  # the demo's checkpoint (its single-file form is what it uploads)


def customize(base, workdir: Path, train_steps: int, num_images: int,
              checkpoint: Path = CUSTOMIZED_DIR / CHECKPOINT):
    """A short Still-Moving customization of `checkpoint` (default: the committed DreamBooth fine-tune, the demo's;
    no Motion Adapter)."""
    prompts = tuple(world.image_caption(s, c, "two-tone") for s in world.SHAPES for c in world.COLOURS)
    train = engine.TrainSpec(prompts=prompts, num_images=num_images, train_steps=train_steps, seed=0,
                             use_motion_adapter=False, check_motion_adapter=False, preview=False)
    start = time.time()
    engine.customize(base, checkpoint, train, workdir / "custom", workdir / "motion-cache")
    return engine.load_customization(base, workdir / "custom", checkpoint), round(time.time() - start, 1)


def score(frames: np.ndarray, ref: world.Sample, judge) -> dict:
    """One sampled video (F, H, W, 3) uint8 against its reference."""
    read = judge.read(frames)
    return {"iou": judge_mod.frame_ious(frames, ref.masks), "look": read["look"], "readable": read["readable"],
            "shape": [s == ref.scene.shape for s in read["shape"]],
            "colour": [c == ref.scene.colour for c in read["colour"]]}


def summarize(scores: list[dict]) -> dict:
    def mean(key, f=lambda v: v):
        return round(float(np.mean([f(v) for s in scores for v in s[key]])), 4)

    return {"videos": len(scores), "mean_iou": mean("iou"),
            "iou_per_frame": [round(float(np.mean([s["iou"][i] for s in scores])), 4)
                              for i in range(len(scores[0]["iou"]))],
            "look_two_tone_frames": mean("look", lambda v: v == "two-tone"),
            "look_two_tone_videos": round(float(np.mean(
                [np.mean([v == "two-tone" for v in s["look"]]) > 0.5 for s in scores])), 4),
            "readable_frames": mean("readable", float), "shape_frames": mean("shape", float),
            "colour_frames": mean("colour", float)}


def _shown(path: Path) -> str:
    repo = ROOT.parents[1]
    return str(path.resolve().relative_to(repo)) if path.resolve().is_relative_to(repo) else str(path)


def write_side_by_side(reference_frames: np.ndarray, videos: dict[str, np.ndarray], path: Path,
                       zoom: int = 4) -> Path:
    """An animated GIF: the reference, then each run's video of it, left to right, `zoom` x nearest."""
    tiles = [reference_frames, *videos.values()]
    frames = np.concatenate(tiles, axis=2).repeat(zoom, axis=1).repeat(zoom, axis=2)
    return export.write_video(frames, path.parent, path.stem, "gif", 4)[0]


def evaluate(num_videos: int = 16, steps: int = 25, scale: float = 1.0, train_steps: int = 100,
             num_images: int = 12, controlnet_dir: Path = ROOT / "controlnet-canny",
             methods: tuple[str, ...] = ("base", "naive", "still-moving"), out_dir: Path | None = None) -> dict:
    """Every method with and without the control over `num_videos` references; returns the report."""
    judge = judge_mod.Judge.load(JUDGE_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        base = engine.load_base_models(engine.ModelSpec(preset="shapes"), workdir / "base")
        base_guidance = base.defaults.guidance_scale  # what SampleSpec(guidance_scale=None) samples at
        controlnet = engine.load_controlnet(base, str(controlnet_dir))
        custom, custom_seconds = customize(base, workdir, train_steps, num_images) \
            if set(methods) - {"base"} else (None, 0.0)
        refs = [reference(i) for i in range(num_videos)]
        paths = [export.write_video(r.frames, workdir / "refs", f"ref{i}", "gif", 8)[0] for i, r in enumerate(refs)]
        runs, examples = {}, {}
        for method in methods:
            for controlled in (False, True):
                start, scores = time.time(), []
                for i, (ref, path) in enumerate(zip(refs, paths)):
                    control = ControlSpec(video=str(path), type="canny", scale=scale, source_frames=len(ref.frames)) \
                        if controlled else None
                    sample = SampleSpec(prompt=world.image_caption(ref.scene.shape, ref.scene.colour, "two-tone"),
                                        method=method, steps=steps, seed=1000 + i, control=control)
                    frames, _ = engine.sampling.render_frames(base, custom, sample, Reporter(None, None),
                                                              controlnet=controlnet if controlled else None)
                    frames = (frames * 255).round().astype(np.uint8)
                    scores.append(score(frames, ref, judge))
                    if i == 0:
                        examples[f"{method}{'+control' if controlled else ''}"] = frames
                name = f"{method} {'with' if controlled else 'without'} control"
                runs[name] = summarize(scores) | {"seconds": round(time.time() - start, 1)}
                print(f"[control-eval] {name}: {runs[name]}", flush=True)
        if out_dir is not None:
            write_side_by_side(refs[0].frames, examples, out_dir / "control-evidence.gif")
    return {"settings": {"videos": num_videos, "steps": steps, "guidance_scale": base_guidance, "control_scale": scale,
                         "canny_thresholds": [100, 200], "prompt": "a sks {colour} {shape} (no motion phrase)",
                         "paths": "diagonal (even) / quarter arc (odd), 12 px along each axis, 8 frames",
                         "customization": {"checkpoint": _shown(CUSTOMIZED_DIR / CHECKPOINT),
                                           "train_steps": train_steps, "num_images": num_images,
                                           "motion_adapter": False, "seconds": custom_seconds},
                         "controlnet": _shown(Path(controlnet_dir)),
                         "sample_seeds": "1000 + i", "reference_seeds": "5000 + i",
                         "side_by_side_gif": ["reference", *examples]},
            "runs": runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--methods", nargs="+", default=["base", "naive", "still-moving"])
    parser.add_argument("--controlnet", type=Path, default=ROOT / "controlnet-canny")
    parser.add_argument("--out", type=Path, default=DOCS / "control-evidence.json")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = evaluate(args.videos, args.steps, args.scale, args.train_steps, controlnet_dir=args.controlnet,
                      methods=tuple(args.methods), out_dir=args.out.parent)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"[control-eval] wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
