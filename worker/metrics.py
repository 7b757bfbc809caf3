"""A worker's own metrics, served by its main process on ``worker_metrics_host:worker_metrics_port``.

The work happens in Celery's pool processes, which no scrape can reach and which come and go; so each writes its
metrics to files of prometheus_client's multiprocess mode (``<workdir>/metrics/<main pid>/``) and the main
process serves their sum from one port (a fixed port per worker: one per pod or machine, found by Prometheus'
service discovery). A Pushgateway would outlive dead workers' numbers and suits batch jobs, not long-lived ones.

Per pool process: engine steps by kind and stage (their rate is the step rate), seconds per stage, the model
caches' hits and misses, device memory (CUDA's allocated and reserved bytes when torch uses it, always the
process's resident memory). The service-wide numbers (queues, jobs, webhooks) are the API's ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server, values

log = logging.getLogger("stillmoving.worker")
STAGE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
_dir: Path | None = None  # this worker's multiprocess directory once `prepare` ran

# Every metric has labels: a labelled child's value is made on first use, in the pool process, after `prepare`.
STEPS = Counter("stillmoving_worker_steps", "Engine steps reported (denoising, training, images), by job kind and "
                "stage: their rate is the step rate", ["kind", "stage"])
STAGE_SECONDS = Histogram("stillmoving_worker_stage_seconds", "Seconds a run spent in each stage", ["kind", "stage"],
                          buckets=STAGE_BUCKETS)
CACHE = Counter("stillmoving_worker_cache_requests", "Loaded-model cache lookups of the pool processes (base "
                "models, customizations, ControlNets), by result", ["cache", "result"])
DEVICE_MEMORY = Gauge("stillmoving_worker_device_memory_bytes", "Memory of each pool process: CUDA allocated and "
                      "reserved bytes per device when torch uses one, and the process's resident memory (cpu rss)",
                      ["device", "type"], multiprocess_mode="liveall")
RUNNING = Gauge("stillmoving_worker_jobs_running", "Jobs this worker's pool processes are running now", ["kind"],
                multiprocess_mode="livesum")


def prepare(settings) -> Path:
    """In the worker's main process, before any metric value exists: metrics go to a fresh directory of this
    worker's (a previous worker's directories whose process is gone are removed)."""
    global _dir
    root = Path(settings.workdir).resolve() / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and not _alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    _dir = root / str(os.getpid())
    shutil.rmtree(_dir, ignore_errors=True)
    _dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_dir)  # where the pool's values are written (the library reads it)
    values.ValueClass = values.MultiProcessValue()
    return _dir


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(settings) -> bool:
    """In the main process once the worker is ready: serve the pool's metrics (False when off or the port is
    taken: the worker runs on without)."""
    if not settings.worker_metrics_port or _dir is None:
        return False
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(_dir))
    try:
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=registry)
    except OSError as exc:
        log.warning("worker metrics not served: %s:%d: %s", settings.worker_metrics_host,
                    settings.worker_metrics_port, exc)
        return False
    log.info("worker metrics on http://%s:%d/metrics", settings.worker_metrics_host, settings.worker_metrics_port)
    return True


def process_exiting() -> None:
    """A pool process ends: its live gauges (memory, running) leave the sum."""
    if _dir is not None:
        multiprocess.mark_process_dead(os.getpid(), str(_dir))


def cache_lookup(cache: str, hit: bool) -> None:
    CACHE.labels(cache, "hit" if hit else "miss").inc()


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def record_memory() -> None:
    """Set this process's memory gauges: CUDA's (only if torch is loaded and has initialised CUDA: this never
    imports torch, so the main process stays free of it) and the resident memory."""
    DEVICE_MEMORY.labels("cpu", "rss").set(_rss_bytes())
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            DEVICE_MEMORY.labels(f"cuda:{index}", "allocated").set(torch.cuda.memory_allocated(index))
            DEVICE_MEMORY.labels(f"cuda:{index}", "reserved").set(torch.cuda.memory_reserved(index))
