"""Benchmark 5: warm against cold generation on the `tiny` preset, end to end in one process.

  * cold: `load_base_models` + `load_customization` + `generate` (what a worker does for a request
    whose base and customization are not in its caches; imports are already done);
  * warm: `generate` with the base and the customization already loaded (the worker's LRU caches hit).
Interleaved, median of `--repeats` after warm-up. Both write the same mp4 (asserted bit-equal frames).
Informative extra row: cold in a fresh Python process (interpreter start + `import engine` + the cold
path), the cost a newly started worker pays on its first request; median of `--process-repeats`.
Target (issue 5): cold / warm >= 3 (in-process definition above).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import engine
from bench.harness import interleaved, quiet, report, timed
from bench.tiny import quick_customization, tiny_base, tiny_checkpoint
from engine import export

TARGET = 3.0


def child(directory: Path, checkpoint: Path, out: Path) -> None:
    """The cold path in a fresh process (run by the parent, which times the whole process)."""
    quiet()
    base = tiny_base(out)
    custom = engine.load_customization(base, directory, checkpoint)
    engine.generate(base, custom, engine.SampleSpec(prompt="a photo of sks dog running", seed=3), out)


def fresh_process(directory: Path, checkpoint: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.warm_cold", "--child", str(directory), str(checkpoint), str(out)],
                   check=True, cwd=Path(__file__).parent.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--process-repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    quiet()
    work = Path(tempfile.mkdtemp(prefix="bench-warm-cold-"))
    checkpoint = tiny_checkpoint(work)
    base = tiny_base(work)
    directory = quick_customization(base, work, checkpoint)
    custom = engine.load_customization(base, directory, checkpoint)
    sample = engine.SampleSpec(prompt="a photo of sks dog running", seed=3)  # the preset's size/frames/steps
    parts: dict[str, list[float]] = {"load_base": [], "load_customization": [], "generate": []}

    def cold():
        t_base, fresh = timed(lambda: tiny_base(work / "cold"))
        t_custom, fresh_custom = timed(lambda: engine.load_customization(fresh, directory, checkpoint))
        t_gen, result = timed(lambda: engine.generate(fresh, fresh_custom, sample, work / "cold-video"))
        for key, value in zip(parts, (t_base, t_custom, t_gen)):
            parts[key].append(value)
        return result

    def warm():
        return engine.generate(base, custom, sample, work / "warm-video")

    same = bool((export.read_video(cold()["video"]) == export.read_video(warm()["video"])).all())
    assert same, "cold and warm generation wrote different videos"
    timing = interleaved({"cold": cold, "warm": warm}, args.repeats, args.warmup)
    t_cold, t_warm = timing["cold"]["median"], timing["warm"]["median"]
    process = [fresh_process(directory, checkpoint, work / "process") for _ in range(args.process_repeats)]
    t_process = statistics.median(process)
    breakdown = {k: statistics.median(v[-args.repeats:]) for k, v in parts.items()}
    rows = [
        {"path": "warm (generate, models cached)", "seconds": t_warm, "x_warm": 1.0},
        {"path": "cold (load base + load customization + generate)", "seconds": t_cold, "x_warm": t_cold / t_warm},
        {"path": "  of which load_base_models", "seconds": breakdown["load_base"], "x_warm": ""},
        {"path": "  of which load_customization", "seconds": breakdown["load_customization"], "x_warm": ""},
        {"path": "  of which generate", "seconds": breakdown["generate"], "x_warm": ""},
        {"path": "info: cold in a fresh process (start + imports + cold path)", "seconds": t_process,
         "x_warm": t_process / t_warm},
    ]
    report("warm_cold", rows, {
        "config": {"preset": "tiny", "frames": base.defaults.num_frames, "size": base.defaults.height,
                   "steps": base.defaults.sample_steps, "repeats": args.repeats, "warmup": args.warmup},
        "videos_equal": same, "timings": timing, "fresh_process_seconds": process, "cold_breakdown_median": breakdown,
        "target": f"cold / warm >= {TARGET}", "met": t_cold / t_warm >= TARGET,
    })


if __name__ == "__main__":
    main()
