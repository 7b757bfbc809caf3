"""Long videos and prompt travel: the rules the request schema, the cost limits and the engine share
(torch- and pydantic-free, so the engine reads them too).

A video longer than its context, or with a ``{frame: prompt}`` map, samples with FreeNoise (`engine.free_noise`):
the UNet sees windows of `context_length` frames whose starts are `context_stride` apart (`windows`), and the
prompt's embedding is interpolated linearly from one key frame to the next (frame k of ``{0: a, 64: b}`` has
``(1 - k/64) a + (k/64) b``; after the last key, its prompt).
"""

from __future__ import annotations

MAX_TRAVEL_PROMPTS = 64  # key frames of one {frame: prompt} map
# default overlap of two windows = context_length / 4, so stride = 3/4 of the window: AnimateDiff-Evolved's default
# (overlap 4 of 16), which also windows the whole UNet; each frame then runs through the UNet ~4/3 times
OVERLAP_DIVISOR = 4


class LongVideoError(ValueError):
    """A long-video argument out of range; `field` names it. A ValueError, so the schema reports it as a
    validation error of its field; the limits and the engine re-raise it as their own type."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.message = message
        self.field = field


def parse_prompt(value: object, max_chars: int | None = None) -> str | dict[int, str]:
    """A request's prompt: a non-empty string, or a ``{frame: prompt}`` map (JSON's string keys made integers,
    sorted by frame) with frame 0 among its keys and each prompt a non-empty string (of at most `max_chars`)."""
    if isinstance(value, str):
        _check_text(value, max_chars, "prompt")
        return value
    if not isinstance(value, dict):
        raise LongVideoError("prompt must be a string or an object {frame: prompt}", "prompt")
    if not 1 <= len(value) <= MAX_TRAVEL_PROMPTS:
        raise LongVideoError(f"prompt: a {{frame: prompt}} map has 1..{MAX_TRAVEL_PROMPTS} entries, got {len(value)}",
                             "prompt")
    frames: dict[int, str] = {}
    for key, text in value.items():
        frame = key if isinstance(key, int) and not isinstance(key, bool) else _frame(key)
        if frame in frames:
            raise LongVideoError(f"prompt: frame {frame} is given twice", "prompt")
        _check_text(text, max_chars, f"prompt[{frame}]")
        frames[frame] = text
    if 0 not in frames:
        raise LongVideoError("prompt: a {frame: prompt} map needs frame 0 (where the video starts)", "prompt")
    return dict(sorted(frames.items()))


def _frame(key: object) -> int:
    text = str(key)
    if not text.isascii() or not text.isdigit():
        raise LongVideoError(f"prompt: key {key!r} is not a frame number (an integer >= 0)", "prompt")
    return int(text)


def _check_text(text: object, max_chars: int | None, where: str) -> None:
    if not isinstance(text, str):
        raise LongVideoError(f"{where} must be a string", "prompt")
    if not text.strip():
        raise LongVideoError(f"{where} is empty", "prompt")
    if max_chars is not None and len(text) > max_chars:
        raise LongVideoError(f"{where} is longer than {max_chars} characters", "prompt")


def check_prompt_frames(prompt: dict[int, str], num_frames: int) -> None:
    """Every key frame of a prompt map is a frame of the video: in [0, num_frames)."""
    for frame in prompt:
        if not 0 <= frame < num_frames:
            raise LongVideoError(f"prompt: frame {frame} is not in [0, num_frames={num_frames})", "prompt")


def context_window(positions: int, num_frames: int, context_length: int | None, context_stride: int | None,
                   travel: bool) -> tuple[int, int] | None:
    """FreeNoise's ``(context_length, context_stride)`` for a video, or None when it samples in one plain pass.

    Args:
        positions: the motion modules' frame positions: the default and the largest window.
        travel: the prompt is a ``{frame: prompt}`` map (which needs FreeNoise's per-frame embeddings).

    A video of at most `context_length` frames with one prompt is the plain path, unchanged; with a prompt map
    it runs FreeNoise in one window of all its frames (equal to the plain path up to float rounding)."""
    length = positions if context_length is None else context_length
    if not 2 <= length <= positions:
        raise LongVideoError(f"context_length={length}: the motion modules have {positions} frame positions "
                             f"(context_length 2..{positions})", "context_length")
    window = min(length, num_frames)
    stride = max(1, window - max(1, window // OVERLAP_DIVISOR)) if context_stride is None else context_stride
    if not 1 <= stride <= length:
        raise LongVideoError(f"context_stride={stride} must be in 1..context_length={length} (a longer stride "
                             "leaves frames outside every window)", "context_stride")
    if num_frames <= length and not travel:
        return None
    return window, stride


def windows(num_frames: int, context_length: int, context_stride: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` frames of each window: starts `context_stride` apart, and a last one ending at the
    last frame when the strides do not land there (every frame in a window)."""
    out = [(start, start + context_length) for start in range(0, num_frames - context_length + 1, context_stride)]
    if not out or out[-1][1] != num_frames:
        out.append((max(0, num_frames - context_length), num_frames))
    return out
