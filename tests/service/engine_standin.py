"""An engine stand-in for fault tests: a real Celery worker whose engine calls stop where the job says, so that
a test opens its timing window exactly, whatever the machine's load, instead of with a long sampling run.

    python -m tests.service.engine_standin -A worker.celery_app worker ...   (Celery's own command line)

Nothing in the product changes: when it starts, each pool process loads the engine and the base models (as
its first task would; `LOADED` in the log says when it is done, so no test's timing includes it) and wraps
`engine.generate` and `engine.customize`, which the worker's runner calls. A job asks for a behaviour with
words in its prompt (a generation's, or a customization's first one); without them it runs the real engine:

    @hold=STAGE   at the engine's first progress report of STAGE ("denoise", "train", ...), or with
    @hold=STAGE:N at its first report of step N or later (training reports after saving that step's resume
                  state), the call waits, honouring cancel and the lease (the runner's heartbeat goes on) ...
    @gate=NAME    ... until a test opens gate NAME (`tests.service.processes.open_gate`) or the job is to be
                  suspended (its worker shuts down), then the real engine goes on (and suspends); without a
                  gate it waits until it is canceled, suspended, loses its lease or hits a time limit
    @raise=STAGE  at the first progress report of STAGE the engine raises RuntimeError (an engine bug)
    @stall=STAGE  at the first progress report of STAGE the call sleeps for ever, checking nothing (one engine
                  step longer than any grace period); the runner's heartbeat goes on

A held job is running in that stage for as long as the test wants, so a fault injected meanwhile (a worker
killed, storage or Redis down) always lands there; when the gate opens, the real engine finishes the job.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from pathlib import Path

GATES_ENV = "STILLMOVING_STANDIN_GATES"  # the directory whose files are the open gates
ENTRY = ("-m", "tests.service.engine_standin")  # `entry` of a worker started by `scripts.processes`
LOADED = "engine stand-in: engine and base models loaded"

log = logging.getLogger("stillmoving.standin")


def directives(prompt: str) -> dict[str, str]:
    """``{"hold": "denoise", "gate": "go"}`` from ``"a dog @hold=denoise @gate=go"``."""
    return dict(word[1:].split("=", 1) for word in prompt.split() if word.startswith("@") and "=" in word)


def _stopping(progress, should_cancel, should_suspend, asked: dict[str, str]):
    """`progress` that raises or waits at the stages `asked` names (once per stage)."""
    from engine import CancelledError

    gate = Path(os.environ[GATES_ENV]) / asked["gate"] if "gate" in asked else None
    hold, _, hold_step = asked.get("hold", "").partition(":")
    done: set[str] = set()

    def report(stage: str, step: int, total: int) -> None:
        if progress is not None:
            progress(stage, step, total)
        if stage in done:
            return
        if stage == asked.get("raise"):
            done.add(stage)
            raise RuntimeError(f"engine stand-in: raised at {stage}")
        if stage == asked.get("stall"):
            log.info("engine stand-in: stalled at %s %d/%d", stage, step, total)
            while True:
                time.sleep(1)
        if stage == hold and step >= int(hold_step or 0):
            done.add(stage)
            log.info("engine stand-in: holding at %s %d/%d until %s", stage, step, total, gate or "stopped")
            while gate is None or not gate.exists():
                if should_cancel is not None and should_cancel():
                    raise CancelledError("canceled by request")
                if should_suspend is not None and should_suspend():
                    log.info("engine stand-in: suspended at %s %d/%d, the engine goes on", stage, step, total)
                    return
                time.sleep(0.05)
            log.info("engine stand-in: gate %s open, the engine goes on", gate.name)

    return report


def _standin(real, prompt_of):
    @functools.wraps(real)
    def call(*args, progress=None, should_cancel=None, should_suspend=None, **kwargs):
        asked = directives(prompt_of(args[2]))  # generate(base, custom, sample, ...), customize(base, ckpt, train, ...)
        if asked:
            progress = _stopping(progress, should_cancel, should_suspend, asked)
        return real(*args, progress=progress, should_cancel=should_cancel, should_suspend=should_suspend, **kwargs)

    return call


def load(**_) -> None:
    """On ``worker_process_init``: load the engine and the runner's base models, and wrap the engine calls, in
    a thread (the pool process's start-up has a timeout of its own); then log `LOADED`."""

    def run() -> None:
        # The pool's own handler (`worker.tasks._load_engine`) imports these in the main thread meanwhile: the same
        # order here, so neither thread waits for a module the other holds while holding one it needs (Python
        # then hands one of them a half-initialized module: "cannot import name 'AutoencoderKL' from 'diffusers'").
        import diffusers.utils  # noqa: F401
        import transformers.utils  # noqa: F401

        import engine
        from worker.runner import get_runner

        get_runner().base()
        engine.generate = _standin(engine.generate, lambda sample: sample.prompt)
        engine.customize = _standin(engine.customize, lambda train: train.prompts[0])
        log.info(LOADED)

    threading.Thread(target=run, name="standin-load", daemon=True).start()


if __name__ == "__main__":
    from celery.bin.celery import main
    from celery.signals import worker_process_init

    worker_process_init.connect(load, weak=False)
    sys.exit(main())
