"""`python -m engine.shapes.motion_adapter_budget`: how much training does the Motion Adapter need to freeze motion?

The Still-Moving claim behind `motion_adapter_scale`: the Motion Adapter, trained on frozen videos, makes the T2V
model's videos static at scale 1, and a negative scale moves them more than the base. This measures it on the
shapes world's *base* T2V (no Spatial Adapters: the Motion Adapter alone, as the shared one is trained) for each
`MotionAdapterSpec` recipe in `RECIPES`, all fixed before the first run and all reported: per recipe and scale
(1, 0, -1), the mean centroid displacement per frame (px, `measures.video_measures`) over the same prompts and
seeds, with 95% bootstrap intervals, the training's seconds and final loss. Written to
`docs/motion-adapter-budget.json`; `docs/evidence.md` cites it for the defaults.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import engine
from engine import adapters
from engine.artifact import Customization
from engine.export import to_uint8
from engine.motion_adapter import META_FILE, ensure_motion_adapter
from engine.progress import Reporter
from engine.sampling import render_frames
from engine.shapes import judge as judge_mod
from engine.shapes import measures, world
from engine.shapes.paths import JUDGE_DIR
from engine.specs import MotionAdapterSpec, SampleSpec, TrainSpec

DOCS = Path(__file__).resolve().parents[2] / "docs"
REPORT = DOCS / "motion-adapter-budget.json"
# (name, MotionAdapterSpec overrides): the product's defaults before this experiment first (lr 1e-4), then more
# learning rate, batch and steps; each names what it sets, so a rerun measures the same recipes whatever the defaults.
RECIPES: tuple[tuple[str, dict], ...] = (
    ("lr 1e-4", {"learning_rate": 1e-4}),
    ("lr 1e-3", {"learning_rate": 1e-3}),
    ("lr 1e-3, batch 8", {"learning_rate": 1e-3, "batch_size": 8}),
    ("lr 1e-3, batch 8, 1000 steps", {"learning_rate": 1e-3, "batch_size": 8, "train_steps": 1000}),
)
SCALES = (1.0, 0.0, -1.0)
PROMPTS = tuple(zip(tuple(world.SHAPES) * 4, tuple(world.COLOURS) * 3,  # every shape, colour and direction
                    ("right", "left", "up", "down") * 3))[:8]


def base_with_motion_adapter(base, path: Path) -> Customization:
    """The base T2V with only a Motion Adapter loaded: `method="naive"` then samples the base's own spatial
    layers with the Motion Adapter at the spec's `motion_adapter_scale`."""
    unet = base.base_motion_unet()
    adapters.load_adapter(unet, adapters.MOTION, path)
    return Customization(manifest={}, components=base.components, unet=unet)


def measure(base, custom: Customization, judge, prompts, seeds, steps: int | None) -> dict:
    out = {}
    for scale in SCALES:
        values = []
        for shape, colour, direction in prompts:
            for seed in seeds:
                spec = SampleSpec(prompt=f"a {colour} {shape} {world.motion_phrase(direction)}", seed=seed,
                                  method="naive", motion_adapter_scale=scale, steps=steps)
                frames, _ = render_frames(base, custom, spec, Reporter())
                m = measures.video_measures(to_uint8(frames), judge, measures.Asked(shape, colour, direction, False))
                values.append(m["displacement_px"])
        out[str(scale)] = measures.bootstrap(values) | {"values": [None if v is None else round(v, 3)
                                                                   for v in values]}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", help="names from RECIPES (default: all)")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    parser.add_argument("--train-steps", type=int, default=None, help="override every recipe's steps (tests)")
    parser.add_argument("--num-images", type=int, default=None, help="override the stills per recipe (tests)")
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    judge = judge_mod.Judge.load(JUDGE_DIR)
    report: dict = {"command": "python -m engine.shapes.motion_adapter_budget " + shlex.join(
                        sys.argv[1:] if argv is None else argv),
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "prompts": [list(p) for p in PROMPTS[:args.prompts]], "seeds": list(range(args.seeds)),
                    "scales": list(SCALES), "recipes": {}}
    with tempfile.TemporaryDirectory(prefix="ma-budget-") as tmp:
        base = engine.load_base_models(engine.ModelSpec(preset="shapes"), Path(tmp) / "base")
        report["sampling_steps"] = base.defaults.fill(steps=args.steps)["steps"]
        for name, overrides in RECIPES:
            if args.recipes and name not in args.recipes:
                continue
            spec = replace(MotionAdapterSpec(), **overrides)
            if args.train_steps is not None:
                spec = replace(spec, train_steps=args.train_steps)
            if args.num_images is not None:
                spec = replace(spec, num_images=args.num_images)
            train = TrainSpec(prompts=("a red circle",), motion=spec)
            start = time.time()
            path, _ = ensure_motion_adapter(base, train, Path(tmp) / "cache", Reporter())
            seconds = round(time.time() - start, 1)
            losses = json.loads((path.parent / META_FILE).read_text())["losses"]
            custom = base_with_motion_adapter(base, path)
            start = time.time()
            moved = measure(base, custom, judge, PROMPTS[:args.prompts], range(args.seeds), args.steps)
            report["recipes"][name] = {
                "spec": asdict(spec), "train_seconds": seconds, "sample_seconds": round(time.time() - start, 1),
                "loss_first_10": round(float(np.mean(losses[:10])), 5), "loss_last_10": round(float(np.mean(losses[-10:])), 5),
                "displacement_px": moved}
            print(f"[budget] {name}: train {seconds} s; px/frame at scale "
                  + ", ".join(f"{s}: {moved[str(s)]['mean']}" for s in SCALES), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
