"""Run the CPU-feasible benchmarks one after another (each in its own process), then print a summary.

    PYTHONPATH=. .venv/bin/python -m bench.run_all            # 1-6 and 7b (about 15 minutes on 2 quiet cores)
    PYTHONPATH=. .venv/bin/python -m bench.run_all --with-real-size   # + 7 on CPU (about 5 more minutes)
    PYTHONPATH=. .venv/bin/python -m bench.run_all --only sampling,training

Exit status 1 when a benchmark fails to run; a missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"
BENCHMARKS = ["sampling", "training", "customize_e2e", "motion_cache", "warm_cold", "api_latency", "train_memory"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(BENCHMARKS + ["real_size"]))
    parser.add_argument("--with-real-size", action="store_true", help="also run benchmark 7 (CPU: ~5 min)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else BENCHMARKS + (["real_size"] if args.with_real_size else [])
    failed, summary = [], []
    for name in names:
        print(f"\n##### bench.{name}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"], cwd=ROOT)
        seconds = time.perf_counter() - start
        if code:
            failed.append(name)
            summary.append((name, seconds, "FAILED", ""))
            continue
        result = json.loads((RESULTS / f"{name}.json").read_text())
        summary.append((name, seconds, result.get("met", "-"), result.get("target", "")))
    print("\n##### summary")
    for name, seconds, met, target in summary:
        print(f"{name:<15} {seconds:6.1f} s  met={met}  ({target})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
