"""Progress reporting and cooperative cancellation shared by every long engine call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from engine.errors import CancelledError

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
LossFn = Callable[[str, int, int, float], None]


@dataclass
class Reporter:
    """Bundles the caller's callbacks; `step()` reports and then honours a cancel request; `on_loss` hears
    each training step's loss (``on_loss(stage, step, total, loss)``)."""

    progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None
    on_loss: LossFn | None = None

    def step(self, stage: str, step: int, total: int) -> None:
        """Report `step` of `total` in `stage`, then raise `CancelledError` if asked to stop."""
        if self.progress is not None:
            self.progress(stage, step, total)
        self.check()

    def loss(self, stage: str, step: int, total: int, value: float) -> None:
        """Report the loss of training step `step` of `total` in `stage`."""
        if self.on_loss is not None:
            self.on_loss(stage, step, total, value)

    def check(self) -> None:
        """Raise `CancelledError` when the caller's cancel check says so."""
        if self.should_cancel is not None and self.should_cancel():
            raise CancelledError("canceled by request")
