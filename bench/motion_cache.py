"""Benchmark 4: the Motion Adapter cache. A second customization on the same base skips Motion Adapter training.

Each pair: a customization with an empty cache (trains the Motion Adapter: the default 300 steps on 16
stills, and stores it), then a second customization with a different checkpoint on the same base and
settings (loads it). The spatial part is kept short (identical in both runs; it does not touch the cache).
Reported: the median time of each, the time saved, the `motion_adapter` stage of each, and checks that
the second run did not train (`trained_now`), used the same cache key, and that a customization made
with a cached Motion Adapter is bit-identical to one made right after training it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import engine
from bench.harness import quiet, report, timed
from bench.tiny import PROMPTS, quick_customization, tiny_base, tiny_checkpoint

TRAIN = engine.TrainSpec(prompts=PROMPTS, num_images=4, train_steps=20, rank=4, preview=False,
                         motion_adapter_source="shared")  # the cache is what this measures


def run(base, checkpoint: Path, out: Path, cache: Path) -> dict:
    total, manifest = timed(lambda: engine.customize(base, checkpoint, TRAIN, out, cache))
    return {"total": total, "motion_stage": manifest["timings"]["motion_adapter"],
            "trained_now": manifest["motion_adapter"]["trained_now"], "key": manifest["motion_adapter"]["key"],
            "spatial": str(out / manifest["spatial_adapter"]["file"])}


def same_tensors(a: str, b: str) -> bool:
    """Bit-equal adapter tensors (not file hashes: safetensors writes metadata keys in varying order)."""
    import torch
    from safetensors.torch import load_file

    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    quiet()
    work = Path(tempfile.mkdtemp(prefix="bench-motion-cache-"))
    base = tiny_base(work)
    first_ck, second_ck = tiny_checkpoint(work, "lora"), tiny_checkpoint(work, "unet")
    quick_customization(base, work / "warmup", first_ck)  # warm-up
    first, second, same_ck_cached = [], [], []
    for i in range(args.pairs):
        cache = work / f"cache-{i}"
        first.append(run(base, first_ck, work / f"a{i}", cache))
        second.append(run(base, second_ck, work / f"b{i}", cache))
        same_ck_cached.append(run(base, first_ck, work / f"c{i}", cache))
        print(f"pair {i + 1}/{args.pairs}: empty cache {first[-1]['total']:.1f} s, "
              f"cached {second[-1]['total']:.1f} s", flush=True)
    checks = {
        "first_trained": all(r["trained_now"] for r in first),
        "second_skipped_training": not any(r["trained_now"] for r in second + same_ck_cached),
        "same_key": len({r["key"] for r in first + second + same_ck_cached}) == 1,
        "cached_result_bit_identical": all(same_tensors(a["spatial"], c["spatial"])
                                           for a, c in zip(first, same_ck_cached)),
    }
    assert all(checks.values()), checks
    t_first = statistics.median(r["total"] for r in first)
    t_second = statistics.median(r["total"] for r in second)
    rows = [
        {"run": "1st customization (empty cache)", "total_s": t_first,
         "motion_adapter_stage_s": statistics.median(r["motion_stage"] for r in first), "ratio": 1.0},
        {"run": "2nd customization (cache hit)", "total_s": t_second,
         "motion_adapter_stage_s": statistics.median(r["motion_stage"] for r in second), "ratio": t_second / t_first},
        {"run": "time saved", "total_s": t_first - t_second, "motion_adapter_stage_s": "", "ratio": ""},
    ]
    report("motion_cache", rows, {
        "config": {"spatial": {"num_images": TRAIN.num_images, "train_steps": TRAIN.train_steps, "rank": TRAIN.rank},
                   "motion": vars(TRAIN.motion), "pairs": args.pairs},
        "checks": checks, "runs": {"first": first, "second": second, "first_checkpoint_again": same_ck_cached},
        "target": "2nd customization skips Motion Adapter training", "met": all(checks.values()),
    })


if __name__ == "__main__":
    main()
