"""Progress reporting and cooperative cancellation shared by every long engine call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from engine.errors import CancelledError

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]


@dataclass
class Reporter:
    """Bundles the caller's callbacks; `step()` reports and then honours a cancel request."""

    progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None

    def step(self, stage: str, step: int, total: int) -> None:
        """Report `step` of `total` in `stage`, then raise `CancelledError` if asked to stop."""
        if self.progress is not None:
            self.progress(stage, step, total)
        self.check()

    def check(self) -> None:
        """Raise `CancelledError` when the caller's cancel check says so."""
        if self.should_cancel is not None and self.should_cancel():
            raise CancelledError("canceled by request")
