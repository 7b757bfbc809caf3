"""Progress reporting and cooperative cancellation shared by every long engine call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from engine.errors import CancelledError, SuspendedError

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]
LossFn = Callable[[str, int, int, float], None]


@dataclass
class Reporter:
    """Bundles the caller's callbacks; `step()` reports and then honours a cancel or suspend request; `on_loss`
    hears each training step's loss (``on_loss(stage, step, total, loss)``)."""

    progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None
    on_loss: LossFn | None = None
    should_suspend: CancelFn | None = None

    def with_progress(self, progress: ProgressFn | None) -> "Reporter":
        """The same cancel and suspend checks with another progress callback (a nested render's)."""
        return Reporter(progress, self.should_cancel, None, self.should_suspend)

    def step(self, stage: str, step: int, total: int) -> None:
        """Report `step` of `total` in `stage`, then raise `CancelledError` if asked to stop."""
        if self.progress is not None:
            self.progress(stage, step, total)
        try:
            self.check()
        except SuspendedError:
            raise SuspendedError(f"suspended at {stage} step {step}/{total}") from None

    def loss(self, stage: str, step: int, total: int, value: float) -> None:
        """Report the loss of training step `step` of `total` in `stage`."""
        if self.on_loss is not None:
            self.on_loss(stage, step, total, value)

    def check(self) -> None:
        """Raise `CancelledError` when the caller's cancel check says so, else `SuspendedError` when its suspend
        check does."""
        if self.should_cancel is not None and self.should_cancel():
            raise CancelledError("canceled by request")
        if self.should_suspend is not None and self.should_suspend():
            raise SuspendedError("suspended between two steps")
