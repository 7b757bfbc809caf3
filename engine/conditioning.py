"""Reference videos for a control or an init: decoded, resampled to the video being made, edge maps.

Resampling: frames evenly spaced over the whole reference (the nearest frame to each of `num_frames` positions;
a shorter reference repeats frames, a still image is a static video), each scaled to cover `height` x `width`
and centre-cropped (its aspect kept). Decoding streams through the imageio-ffmpeg wheel's ffmpeg: with the
reference's frame count known, only the frames used are kept, so a long reference costs time, not memory.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np

from engine.errors import SpecError


def frame_indices(total: int, num_frames: int) -> np.ndarray:
    """Which of `total` reference frames make `num_frames` output frames: evenly spaced, first and last kept."""
    if total < 1 or num_frames < 1:
        raise SpecError(f"cannot take {num_frames} frames from a reference of {total}", field="num_frames")
    return np.rint(np.linspace(0, total - 1, num_frames)).astype(int)


def fit(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w, 3) uint8 scaled to cover (height, width) and centre-cropped to it."""
    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def read_reference(path: Path | str, num_frames: int, height: int, width: int,
                   total: int | None = None) -> np.ndarray:
    """The reference at `path` as (num_frames, height, width, 3) uint8 (see the module docstring).

    Args:
        total: frames of the reference when known (the API probed it); else every decoded frame is kept
            (at the output size) until the end is known.
    """
    wanted = None if total is None else frame_indices(total, num_frames)
    keep = None if wanted is None else set(wanted.tolist())
    kept: dict[int, np.ndarray] = {}
    reader = imageio_ffmpeg.read_frames(str(path), input_params=["-protocol_whitelist", "file"],
                                        output_params=["-fps_mode", "passthrough"])  # each frame once (common.media)
    try:
        meta = next(reader)
        w, h = meta["size"]
        for index, raw in enumerate(reader):
            if keep is None or index in keep:
                kept[index] = fit(np.frombuffer(raw, np.uint8).reshape(h, w, 3), height, width)
            if wanted is not None and index >= wanted[-1]:
                break
    except (OSError, RuntimeError, StopIteration) as exc:
        raise SpecError(f"the reference video {Path(path).name} does not decode: {exc}", field="video") from exc
    finally:
        reader.close()
    if not kept:
        raise SpecError(f"the reference video {Path(path).name} has no frames", field="video")
    if wanted is None:
        wanted = frame_indices(max(kept) + 1, num_frames)
    last = max(kept)  # a reference shorter than its probe said: its last frame stands in
    return np.stack([kept.get(int(i), kept[last]) for i in wanted])


def canny(frames: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """OpenCV Canny edges of each (H, W, 3) uint8 frame, as the white-on-black RGB maps SD 1.5's canny ControlNet
    was trained on: (F, H, W, 3) uint8 of 0 and 255."""
    edges = [cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), low, high) for frame in frames]
    return np.repeat(np.stack(edges)[..., None], 3, axis=-1)
