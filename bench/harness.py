"""Shared benchmark plumbing: machine info, interleaved median-of-N timing, peak memory, a table and JSON.

Every benchmark times "ours" and its reference in the same process, interleaved round by round
(A B, B A, A B, ...), after warm-up runs, and reports medians: on a shared 2-core machine the load
from other processes drifts, and interleaving spreads that drift over both sides of a ratio.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).parent / "results"
_LOAD_AT_START = os.getloadavg()[0]
_BUSY_AT_START: list[float] = []


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores other processes kept busy over `seconds` (from /proc/stat; call while idle)."""
    def sample():
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return round((os.cpu_count() or 1) * (1 - (idle1 - idle0) / max(1, total1 - total0)), 2)


def machine(device: str | torch.device = "cpu") -> dict:
    """Where the figures came from: CPU model, cores, memory, library versions, device, load average."""
    import diffusers
    import peft
    import transformers

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "memory_gib": _mem_total_gib(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "peft": peft.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device": str(device), "loadavg_1m_start": _LOAD_AT_START,
        "busy_cores_before_start": _BUSY_AT_START[0] if _BUSY_AT_START else None, "loadavg_1m_end": os.getloadavg()[0],
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30, 1)
    return info


def _mem_total_gib() -> float | None:
    try:
        kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        return round(kib / 2**20, 1)
    except (OSError, StopIteration):
        return None


def sync(device: str | torch.device | None = None) -> None:
    """Wait for queued GPU work (no-op on CPU), so wall times cover the work itself."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable, device=None):
    """(seconds, result) of one call, GPU-synchronised."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def interleaved(fns: dict[str, Callable], repeats: int = 5, warmup: int = 1, device=None) -> dict[str, dict]:
    """Time each callable `repeats` times, alternating their order each round, after `warmup` calls each.

    Returns:
        ``{name: {"median": s, "min": s, "times": [s, ...]}}``.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            times[name].append(timed(fns[name], device)[0])
    return {name: {"median": statistics.median(t), "min": min(t), "times": [round(x, 5) for x in t]}
            for name, t in times.items()}


class PeakMemory:
    """Peak memory over a `with` block: CUDA allocator peak on a GPU, else the process RSS sampled every 5 ms.

    Attributes after the block: ``peak_gib`` (absolute peak) and ``delta_gib`` (peak minus the level at entry).
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_gib = self.delta_gib = 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = self._peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_gib = peak / 2**30
        self.delta_gib = (peak - self._start) / 2**30
        return False


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def report(name: str, rows: list[dict], extra: dict | None = None, device="cpu") -> dict:
    """Print rows as a table and write ``bench/results/<name>.json`` (machine info included)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    widths = {k: max(len(k), *(len(_fmt(r.get(k, ""))) for r in rows)) for k in keys}
    print(f"\n== {name} ==")
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(_fmt(row.get(k, "")).ljust(widths[k]) for k in keys))
    payload = {"benchmark": name, "machine": machine(device),
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows, **(extra or {})}
    for key in ("target", "met"):
        if key in payload:
            print(f"{key}: {payload[key]}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {path}")
    return payload


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def quiet() -> None:
    """Silence library chatter so the tables stay readable; apply BENCH_THREADS; warn when the machine is busy.

    Other processes' CPU load slows a 2-thread torch run far more than proportionally (its threads wait
    for each other at every op), so the cores other processes kept busy just before the start (1 s of
    /proc/stat) and the load averages are recorded with every result.
    """
    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    _BUSY_AT_START.append(busy_cores())
    if _BUSY_AT_START[0] > 0.3:
        print(f"WARNING: other processes keep {_BUSY_AT_START[0]:.1f} of {os.cpu_count()} cores busy: timings "
              "will be slower and noisier than on an idle machine", flush=True)
    import logging
    import warnings

    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    dl.set_verbosity_error()
    tl.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
