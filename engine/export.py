"""Writing videos: MP4 (H.264 via the imageio-ffmpeg wheel's ffmpeg), GIF, and a PNG poster frame."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image


def to_uint8(frames) -> np.ndarray:
    """Frames in [0, 1] (F, H, W, 3) float -> uint8."""
    arr = np.asarray(frames, dtype=np.float32)
    return (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> Path:
    """H.264 yuv420p MP4 at the frames' own size (sizes are multiples of 8, so no resize)."""
    writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=8, quality=8,
                                ffmpeg_log_level="error")
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()
    return path


def write_gif(frames: np.ndarray, path: Path, fps: int) -> Path:
    """Looping GIF."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path


def write_video(frames: np.ndarray, out_dir: Path, stem: str, fmt: str, fps: int) -> tuple[Path, Path]:
    """Write `stem.<fmt>` and `stem.png` (the first frame as poster); return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    video = out_dir / f"{stem}.{fmt}"
    (write_mp4 if fmt == "mp4" else write_gif)(frames, video, fps)
    poster = out_dir / f"{stem}.png"
    Image.fromarray(frames[0]).save(poster)
    return video, poster


def read_video(path: Path) -> np.ndarray:
    """Decode a video file to (F, H, W, 3) uint8 (for tests and evaluation)."""
    reader = imageio.get_reader(str(path))
    try:
        return np.stack([np.asarray(f)[..., :3] for f in reader])
    finally:
        reader.close()
