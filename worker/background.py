"""A pass that a worker's main process repeats in a thread of its own (the reaper, the webhook deliverer)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("stillmoving.worker")


class Background:
    """Runs `run_pass` every `interval_s` until `stop`; a pass that raises (Redis, the broker or storage
    briefly down) is logged and the next one runs as planned."""

    name = "background"

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()

    def run_pass(self) -> None:
        raise NotImplementedError

    def run_forever(self) -> None:
        while True:
            try:
                self.run_pass()
            except Exception as exc:
                log.warning("%s pass failed: %s", self.name, type(exc).__name__)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name=f"stillmoving-{self.name}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
