"""Benchmark 3: a Still-Moving customization end to end on the `tiny` preset on this machine, per stage.

Two configurations, each from an empty Motion Adapter cache (the first customization on a fresh base):
  * default: the engine's (and the service's) default `TrainSpec` — 40 stills, 500 spatial steps, rank 16,
    Motion Adapter 300 steps on 16 stills; then the same again with the Motion Adapter cache filled
    (every later customization on that base);
  * demo:    the settings `make demo` uses — 4 stills, 40 steps, rank 4, Motion Adapter 50 steps on 4 stills.
Stages are the engine's own (`manifest["timings"]`): load, motion_adapter, sample_images, prepare, train, preview.
The reference is the target itself: total / 60 s (target: < 60 s, i.e. ratio < 1).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import engine
from bench.harness import quiet, report, timed
from bench.tiny import PROMPTS, quick_customization, tiny_base, tiny_checkpoint

TARGET_S = 60.0
CONFIGS = {
    "default": engine.TrainSpec(prompts=PROMPTS),
    "demo": engine.TrainSpec(prompts=PROMPTS, num_images=4, train_steps=40, rank=4, num_frames=8, height=32,
                             width=32, motion=engine.MotionAdapterSpec(train_steps=50, num_images=4)),
}
STAGES = ("load", "motion_adapter", "sample_images", "prepare", "train", "preview")


def run_once(base, checkpoint: Path, train: engine.TrainSpec, work: Path, cache: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work, prefix="custom-"))
    total, manifest = timed(lambda: engine.customize(base, checkpoint, train, out, cache))
    shutil.rmtree(out)
    return {"total": total, **manifest["timings"], "motion_trained_now": manifest["motion_adapter"]["trained_now"]}


def summarize(label: str, runs: list[dict]) -> dict:
    row = {"config": label, "runs": len(runs)}
    for key in ("total",) + STAGES:
        row[f"{key}_s"] = statistics.median(r[key] for r in runs)
    row["ratio_to_60s"] = row["total_s"] / TARGET_S
    row["under_60s"] = row["total_s"] < TARGET_S
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="default,demo")
    parser.add_argument("--repeats-default", type=int, default=1, help="runs of the default config (~100 s each)")
    parser.add_argument("--repeats-demo", type=int, default=3)
    args = parser.parse_args()
    quiet()
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    base = tiny_base(work)
    checkpoint = tiny_checkpoint(work)
    quick_customization(base, work / "warmup", checkpoint)  # warm-up: first-call costs out of the figures
    rows, raw = [], {}
    for name in args.configs.split(","):
        repeats = args.repeats_default if name == "default" else args.repeats_demo
        cold, warm = [], []
        for i in range(repeats):
            cache = work / f"motion-cache-{name}-{i}"
            cold.append(run_once(base, checkpoint, CONFIGS[name], work, cache))
            if name == "default":
                warm.append(run_once(base, checkpoint, CONFIGS[name], work, cache))
            print(f"{name} run {i + 1}/{repeats}: {cold[-1]['total']:.1f} s"
                  + (f" (cache filled: {warm[-1]['total']:.1f} s)" if warm else ""), flush=True)
        assert all(r["motion_trained_now"] for r in cold) and not any(r["motion_trained_now"] for r in warm)
        rows.append(summarize(f"{name}, empty motion cache", cold))
        raw[name] = cold
        if warm:
            rows.append(summarize(f"{name}, motion cache filled", warm))
            raw[f"{name}-cached"] = warm
    met = {row["config"]: row["under_60s"] for row in rows}
    report("customize_e2e", rows, {
        "configs": {name: {k: v for k, v in vars(CONFIGS[name]).items() if k != "prompts"} for name in CONFIGS},
        "runs": raw, "target": f"end to end < {TARGET_S:.0f} s on the tiny preset on CPU", "met": met,
    })


if __name__ == "__main__":
    main()
