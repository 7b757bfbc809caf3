"""Scale-down and spot preemption: a worker that gets SIGTERM ends its running job within `shutdown_grace_s`.

SIGTERM reaches the worker's main process (Kubernetes sends it to the container's first process, then SIGKILL
after ``terminationGracePeriodSeconds``). Celery's warm shutdown then stops taking messages and waits for the
running task, but the task runs in a pool process, which never sees the signal. So the main process (on
Celery's ``worker_shutting_down``) writes a drain deadline in Redis under its own id, ``<host>:<pid>``, which
its pool processes know as ``<host>:<parent pid>``; the running job reads it between two engine steps
(`worker.progress.JobProgress.should_suspend`) and either finishes, when its estimate fits before the deadline
less `shutdown_reserve_s`, or is suspended and given back (`worker.runner.Runner.give_back`): re-queued for
another worker, a training with its resume state saved at the step it was at, the attempt not counted against
`max_attempts`. A job still running at the deadline (one step longer than the grace, an estimate gone wrong) is
given back by the main process itself, which then stops its pool processes and exits.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path

from celery import Celery
from celery.signals import worker_shutting_down

from common.jobstore import JobStore
from common.schemas import JobRecord
from common.settings import Settings
from worker.requeue import requeue

log = logging.getLogger("stillmoving.shutdown")


def worker_id(pid: int | None = None) -> str:
    """The id of a worker's main process (this one by default) in the drain protocol: ``<host>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def children(pid: int) -> list[int]:
    """The pids of `pid`'s child processes (its pool), from /proc; [] where there is no /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def held_jobs(store: JobStore, pids: list[int]) -> list[JobRecord]:
    """The running jobs whose attempt is held by one of these processes of this host."""
    holders = {f"{socket.gethostname()}:{pid}" for pid in pids}
    jobs = (store.get_job(job_id) for job_id, _ in store.running())
    return [job for job in jobs if job is not None and job.status == "running" and job.worker in holders]


def drain(app: Celery, settings: Settings, signal_name: str) -> None:
    """Publish the drain deadline, wait for it, then give back what still runs and exit (a daemon thread: a
    worker whose pool ended in time has exited before)."""
    store, me = JobStore.from_settings(settings), worker_id()
    deadline = time.time() + settings.shutdown_grace_s
    try:
        store.request_drain(me, deadline, math.ceil(settings.shutdown_grace_s) + 60)
    except Exception as exc:  # Redis down: the job runs on until the grace ends (below) or the kill
        log.warning("worker %s: its drain deadline could not be written (%s)", me, type(exc).__name__)
    log.warning("worker %s: %s; its running job finishes within %g s if it can, else it is given back", me,
                signal_name, settings.shutdown_grace_s)
    time.sleep(max(0.0, deadline - time.time()))
    pool = children(os.getpid())
    try:
        for job in held_jobs(store, pool):
            note = (f"attempt {job.attempts}'s worker shut down and the job did not stop within "
                    f"{settings.shutdown_grace_s:g} s; given back")
            if requeue(store, app, settings, job, note, given_back=job.given_back + 1):
                log.warning("job %s: %s", job.id, note)
    except Exception:
        log.exception("worker %s: giving back its running job failed; a reaper will re-queue it", me)
    log.warning("worker %s: the grace period of %g s is over; exiting", me, settings.shutdown_grace_s)
    for pid in pool:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(1)


def install(app: Celery, settings: Settings) -> None:
    """On the worker main process's first warm shutdown signal, start `drain` in a thread (not in the signal
    handler, which may interrupt the main thread anywhere)."""
    started = threading.Event()

    @worker_shutting_down.connect(weak=False)
    def _drain(sig: str = "SIGTERM", how: str = "Warm", **_) -> None:
        if how != "Warm" or started.is_set():
            return
        started.set()
        threading.Thread(target=drain, args=(app, settings, sig), name="stillmoving-drain", daemon=True).start()
